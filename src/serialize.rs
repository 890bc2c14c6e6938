//! `serde::Serialize` for the values inside [`ThrottleStats`](crate::ThrottleStats) and
//! [`CapacityReport`](crate::diagnosis::CapacityReport) (feature `serde`), whose own
//! impls are derived.
//!
//! - [`QuotaKey`]: `{"model", "region", "context", "reserved"}`, `model` and `region`
//!   `null` when unknown, `context` `"standard"` or `"1m"`.
//! - [`Quota`]: `{"requests", "tokens", "period_seconds", "burndown", "discover"}`, the
//!   period in seconds as a number (durations serialize as seconds), `requests` and
//!   `burndown` `null` when not set.
//! - [`Tenant`]: its name, as a string.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use crate::{ContextWindow, Quota, QuotaKey, Tenant};

impl Serialize for QuotaKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("QuotaKey", 4)?;
        s.serialize_field("model", &self.model())?;
        s.serialize_field("region", &self.region())?;
        let context = match self.context() {
            ContextWindow::Standard => "standard",
            ContextWindow::OneMillion => "1m",
        };
        s.serialize_field("context", context)?;
        s.serialize_field("reserved", &self.is_reserved())?;
        s.end()
    }
}

impl Serialize for Quota {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Quota", 5)?;
        s.serialize_field("requests", &self.requests())?;
        s.serialize_field("tokens", &self.tokens())?;
        s.serialize_field("period_seconds", &self.period().as_secs_f64())?;
        s.serialize_field("burndown", &self.burndown())?;
        s.serialize_field("discover", &self.discovers())?;
        s.end()
    }
}

impl Serialize for Tenant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{ContextWindow, Quota, QuotaKey, Tenant};

    #[test]
    fn keys_quotas_and_tenants_serialize_as_documented() {
        let key = QuotaKey::new(Some("m"), None)
            .with_context(ContextWindow::OneMillion)
            .reserved();
        assert_eq!(
            serde_json::to_value(&key).unwrap(),
            json!({"model": "m", "region": null, "context": "1m", "reserved": true})
        );
        let quota = Quota::tokens_per_minute(1_000)
            .with_period(std::time::Duration::from_millis(1_500))
            .with_burndown(5.0);
        assert_eq!(
            serde_json::to_value(quota).unwrap(),
            json!({"requests": null, "tokens": 1_000, "period_seconds": 1.5, "burndown": 5.0, "discover": false})
        );
        assert_eq!(
            serde_json::to_value(Tenant::new("acme")).unwrap(),
            json!("acme")
        );
    }
}
