//! The priority classes of work, highest first.

use std::fmt;
use std::str::FromStr;

/// A tier says who may preempt whom and who is answered 429 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Tier {
    /// Chat traffic: never interrupted.
    Realtime,
    /// Background features: may be shed at a peak.
    Interruptible,
    /// Scientific batch work: the default.
    #[default]
    Batch,
    /// Offline inference: fills whatever is free.
    Offline,
    /// Time-insensitive filler.
    Filler,
    /// Training and experiments on idle capacity.
    Preemptible,
}

impl Tier {
    /// Every tier, highest first.
    pub const ALL: [Tier; 6] = [
        Tier::Realtime,
        Tier::Interruptible,
        Tier::Batch,
        Tier::Offline,
        Tier::Filler,
        Tier::Preemptible,
    ];

    /// The tier's name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Realtime => "realtime",
            Tier::Interruptible => "interruptible",
            Tier::Batch => "batch",
            Tier::Offline => "offline",
            Tier::Filler => "filler",
            Tier::Preemptible => "preemptible",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Tier::ALL.iter().map(|t| t.name()).collect();
                format!("unknown tier '{s}' (one of: {})", names.join(", "))
            })
    }
}
