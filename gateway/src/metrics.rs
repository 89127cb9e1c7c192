//! Prometheus metrics of a gateway (`nokv_gateway_*`), served at
//! `/metrics` on its listener: calls by verb and result code, and their
//! latency.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Every metric a gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    calls_total: IntCounterVec,
    call_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let calls_total = IntCounterVec::new(
            Opts::new(
                "nokv_gateway_calls_total",
                "Verb calls by verb and result code (ok or an error code)",
            ),
            &["verb", "result"],
        )?;
        let call_seconds = HistogramVec::new(
            HistogramOpts::new("nokv_gateway_call_seconds", "Verb call latency")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18)?),
            &["verb"],
        )?;
        registry.register(Box::new(calls_total.clone()))?;
        registry.register(Box::new(call_seconds.clone()))?;
        Ok(Metrics {
            registry,
            calls_total,
            call_seconds,
        })
    }

    /// Records one call. `verb` is one of the known tool names (anything
    /// else is counted as `unknown`, so clients cannot grow the label set).
    pub fn record(&self, verb: &str, known: bool, result: &str, elapsed: Duration) {
        let verb = if known { verb } else { "unknown" };
        self.calls_total.with_label_values(&[verb, result]).inc();
        self.call_seconds
            .with_label_values(&[verb])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_verbs_share_one_label() {
        let m = Metrics::new().expect("metrics");
        m.record("find", true, "ok", Duration::from_millis(3));
        m.record("x-evil-1", false, "unknown_verb", Duration::ZERO);
        m.record("x-evil-2", false, "unknown_verb", Duration::ZERO);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(
            text.contains(r#"nokv_gateway_calls_total{result="ok",verb="find"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"nokv_gateway_calls_total{result="unknown_verb",verb="unknown"} 2"#),
            "{text}"
        );
        assert!(!text.contains("x-evil"), "{text}");
    }
}
