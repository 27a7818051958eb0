//! `/metrics`: the page Prometheus scrapes, beside the API behind its key or alone on its own address.

use super::*;

/// `/metrics` beside the API: it names every tenant, so only the metrics key reads it.
pub(super) async fn metrics(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if g.config.metrics_key.is_none() {
        return Error::UnknownUrl("Metrics are served on metrics_listen, or here with metrics_key set.".into()).into_response();
    }
    if !g.may_scrape(&headers) {
        return Error::Unauthorized.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], g.metrics_text()).into_response()
}

/// `/metrics` on its own address: open on loopback, else behind the metrics key.
pub(super) async fn metrics_alone(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if g.config.metrics_key.is_some() && !g.may_scrape(&headers) {
        return Error::Unauthorized.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], g.metrics_text()).into_response()
}

impl Gateway {
    pub(super) fn metrics_text(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP tidepool_gateway_tokens_total Tokens accounted per tenant and kind.\n# TYPE tidepool_gateway_tokens_total counter\n");
        let tenants = self.lock_tenants();
        for t in tenants.iter() {
            out.push_str(&format!("tidepool_gateway_tokens_total{{tenant=\"{}\",kind=\"prompt\"}} {}\n", t.name, t.prompt_tokens));
            out.push_str(&format!("tidepool_gateway_tokens_total{{tenant=\"{}\",kind=\"completion\"}} {}\n", t.name, t.completion_tokens));
        }
        out.push_str("# HELP tidepool_gateway_requests_total Requests answered per tenant.\n# TYPE tidepool_gateway_requests_total counter\n");
        for t in tenants.iter() {
            out.push_str(&format!("tidepool_gateway_requests_total{{tenant=\"{}\"}} {}\n", t.name, t.requests));
        }
        out.push_str("# HELP tidepool_gateway_refused_total Requests answered 429 per tenant.\n# TYPE tidepool_gateway_refused_total counter\n");
        for t in tenants.iter() {
            out.push_str(&format!("tidepool_gateway_refused_total{{tenant=\"{}\"}} {}\n", t.name, t.refused));
        }
        drop(tenants);
        out.push_str("# HELP tidepool_gateway_refused_by_tier_total Requests answered 429 per tier and limit hit (rpm, tpm, capacity).\n# TYPE tidepool_gateway_refused_by_tier_total counter\n");
        for tier in Tier::ALL {
            for why in Refusal::ALL {
                let n = self.refusals[tier_idx(tier)][why as usize].load(Ordering::Relaxed);
                out.push_str(&format!("tidepool_gateway_refused_by_tier_total{{tier=\"{tier}\",limit=\"{}\"}} {n}\n", why.label()));
            }
        }
        out.push_str("# HELP tidepool_gateway_waiting Requests waiting for a slot per tier.\n# TYPE tidepool_gateway_waiting gauge\n");
        let mut waiting = [0u64; Tier::ALL.len()];
        for w in self.lock_waiters().iter() {
            waiting[tier_idx(w.tier)] += 1;
        }
        for tier in Tier::ALL {
            out.push_str(&format!("tidepool_gateway_waiting{{tier=\"{tier}\"}} {}\n", waiting[tier_idx(tier)]));
        }
        out.push_str("# HELP tidepool_gateway_in_flight Requests in flight per replica and tier.\n# TYPE tidepool_gateway_in_flight gauge\n");
        let replicas = self.lock_replicas();
        for r in replicas.iter() {
            let i = r.id;
            for tier in Tier::ALL {
                out.push_str(&format!("tidepool_gateway_in_flight{{replica=\"{i}\",tier=\"{tier}\"}} {}\n", r.slots.in_flight[tier_idx(tier)]));
            }
        }
        out.push_str("# HELP tidepool_gateway_best_concurrency Best concurrency per replica (configured or learned).\n# TYPE tidepool_gateway_best_concurrency gauge\n");
        for r in replicas.iter() {
            out.push_str(&format!("tidepool_gateway_best_concurrency{{replica=\"{}\"}} {}\n", r.id, r.slots.best_concurrency));
        }
        out.push_str("# HELP tidepool_gateway_cut_off_total Lower-tier streams cut off for realtime.\n# TYPE tidepool_gateway_cut_off_total counter\n");
        for r in replicas.iter() {
            out.push_str(&format!("tidepool_gateway_cut_off_total{{replica=\"{}\"}} {}\n", r.id, r.cut_off));
        }
        out
    }
}
