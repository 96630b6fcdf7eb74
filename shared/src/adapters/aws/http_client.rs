//! The SDK's own default HTTPS client, minus the certificate load at client construction.
//!
//! Building an SDK client validates its HTTP client, and the default one answers by building
//! a TLS connector on purpose, which reads and parses every root certificate of the system
//! (a few milliseconds; on Debian, one bundle file plus each file of `/etc/ssl/certs`). The
//! default credentials chain builds an STS client inside `aws_config::load`, so every Lambda
//! init paid for that before asking for its first event. Wrapped here, the connector (and the
//! certificate load, once per process) comes with the first request instead, inside the first
//! invocation; requests themselves go through the SDK's client unchanged.

use std::fmt;

use aws_smithy_runtime::client::defaults::default_http_client_plugin_v2;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_types::config_bag::ConfigBag;

/// The SDK's default HTTPS client for `behavior`, with its first TLS connector built at the
/// first request rather than when a client is constructed.
pub fn deferred_default_client(behavior: BehaviorVersion) -> Option<SharedHttpClient> {
    let plugin = default_http_client_plugin_v2(behavior)?;
    let default = plugin
        .runtime_components(&RuntimeComponentsBuilder::new("taskrunner"))
        .http_client()?;
    Some(SharedHttpClient::new(Deferred(default)))
}

/// The default client, asked for connectors only when a request needs one.
struct Deferred(SharedHttpClient);

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Deferred").field(&self.0).finish()
    }
}

impl HttpClient for Deferred {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    /// Skipped: the default client validates by building a connector, which is the cost this
    /// wrapper defers. A configuration it would refuse fails at the first request instead.
    fn validate_base_client_config(
        &self,
        _components: &RuntimeComponentsBuilder,
        _cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.validate_final_config(components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}
