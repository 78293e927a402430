//! The build-info gauge: one sample, value 1, the version as a label, so a dashboard
//! can show which version runs where and a query can join on it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Register in the process's prefixed registry: it encodes as `<prefix>_build_info`.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo {
    /// The binary's package version (`env!("CARGO_PKG_VERSION")` in the binary).
    pub version: &'static str,
}

impl Collector for BuildInfo {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            "build_info",
            "Always 1; the labels say which build is running.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", self.version)];
        ConstGauge::new(1i64).encode(m.encode_family(&labels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_with_the_registry_prefix() {
        let mut r = Registry::default();
        r.sub_registry_with_prefix("tandem_test")
            .register_collector(Box::new(BuildInfo { version: "1.2.3" }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("tandem_test_build_info{version=\"1.2.3\"} 1"),
            "{out}"
        );
    }
}
