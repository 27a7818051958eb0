//! Seasonal demand forecasting: Holt-Winters with a multiplicative season (the daily tide) and
//! an additive trend, over equal buckets (one minute, say). Pure: observations in, forecasts
//! out; the caller owns the clock and decides what a bucket is.

/// The smoothing weights: how fast level, trend and season follow what is observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoothing {
    /// Level, 0..1 (higher: today's level is noticed sooner).
    pub alpha: f64,
    /// Trend, 0..1.
    pub beta: f64,
    /// Season, 0..1 (higher: today's shape replaces yesterday's sooner).
    pub gamma: f64,
}

impl Default for Smoothing {
    /// Weights for one-minute buckets of a daily tide: the level follows within minutes, the
    /// trend barely moves, the season keeps most of yesterday's shape.
    fn default() -> Smoothing {
        Smoothing { alpha: 0.2, beta: 0.005, gamma: 0.1 }
    }
}

/// A Holt-Winters forecaster started from one whole past season.
#[derive(Debug, Clone, PartialEq)]
pub struct HoltWinters {
    smoothing: Smoothing,
    level: f64,
    trend: f64,
    /// Seasonal factors, one per bucket of the season.
    season: Vec<f64>,
    /// The bucket of the season the next observation falls in.
    next: usize,
}

impl HoltWinters {
    /// Starts from `past`, one whole season (e.g. yesterday, one value per bucket); None when
    /// it is empty or all zero.
    pub fn from_season(past: &[f64], smoothing: Smoothing) -> Option<HoltWinters> {
        let mean = past.iter().sum::<f64>() / past.len().max(1) as f64;
        if past.is_empty() || mean <= 0.0 {
            return None;
        }
        let season = past.iter().map(|v| (v / mean).max(0.0)).collect();
        Some(HoltWinters { smoothing, level: mean, trend: 0.0, season, next: 0 })
    }

    /// Takes the observed value of the next bucket.
    pub fn observe(&mut self, value: f64) {
        let Smoothing { alpha, beta, gamma } = self.smoothing;
        let factor = self.season[self.next];
        let previous = self.level;
        if factor > 1e-9 {
            self.level = alpha * (value / factor) + (1.0 - alpha) * (self.level + self.trend);
        } else {
            self.level += self.trend;
        }
        self.level = self.level.max(0.0);
        self.trend = beta * (self.level - previous) + (1.0 - beta) * self.trend;
        if self.level > 1e-9 {
            self.season[self.next] = gamma * (value / self.level) + (1.0 - gamma) * factor;
        }
        self.next = (self.next + 1) % self.season.len();
    }

    /// The value expected `ahead` buckets after the last observed one (1: the next bucket).
    pub fn forecast(&self, ahead: usize) -> f64 {
        let ahead = ahead.max(1);
        let factor = self.season[(self.next + ahead - 1) % self.season.len()];
        ((self.level + ahead as f64 * self.trend) * factor).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tide(bucket: usize) -> f64 {
        let x = bucket as f64 / 24.0 * std::f64::consts::TAU;
        10.0 + 8.0 * x.sin()
    }

    #[test]
    fn a_repeated_season_is_forecast_as_it_was() {
        let day: Vec<f64> = (0..24).map(tide).collect();
        let mut hw = HoltWinters::from_season(&day, Smoothing::default()).unwrap();
        for v in &day[..6] {
            hw.observe(*v);
        }
        for ahead in 1..10 {
            let want = day[(5 + ahead) % 24];
            assert!((hw.forecast(ahead) - want).abs() < 1e-6, "{ahead}: {} vs {want}", hw.forecast(ahead));
        }
    }

    #[test]
    fn a_higher_level_today_is_noticed_and_carried_forward() {
        let day: Vec<f64> = (0..24).map(tide).collect();
        let mut hw = HoltWinters::from_season(&day, Smoothing { alpha: 0.5, beta: 0.0, gamma: 0.0 }).unwrap();
        for v in &day[..12] {
            hw.observe(v * 1.5);
        }
        let (got, want) = (hw.forecast(3), day[14] * 1.5);
        assert!((got - want).abs() / want < 0.01, "{got} vs {want}");
        assert_eq!(HoltWinters::from_season(&[0.0, 0.0], Smoothing::default()), None);
        assert_eq!(HoltWinters::from_season(&[], Smoothing::default()), None);
    }
}
