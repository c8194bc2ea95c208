//! The RDS client of one region and resource, built the way the S3 sink builds its client.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_rds::config::{Credentials, Region};
use aws_sdk_rds::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tokio_util::sync::CancellationToken;

use crate::error::Called;
use crate::{RdsCredentials, RdsError, RdsResource, RdsTarget, SecretSource, MAX_DATABASE_ID};

/// RDS snapshots of one DB instance or DB cluster in one region. Cheap to clone.
///
/// [`RdsSnapshots::in_region`] gives the same resource's view of another region (same
/// credentials and endpoint), where its copies live.
#[derive(Clone)]
pub struct RdsSnapshots {
    pub(crate) client: Client,
    /// Credentials, retries and HTTP client, for the clients of other regions.
    sdk_config: SdkConfig,
    pub(crate) region: String,
    pub(crate) endpoint: Option<String>,
    pub(crate) resource: RdsResource,
}

impl fmt::Debug for RdsSnapshots {
    // The SDK's config is left out: it is long, and holds the credentials provider.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdsSnapshots")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl RdsSnapshots {
    /// Checks the target, reads the credentials and builds the client. Makes no request: the
    /// first call shows whether RDS is reachable and the credentials work.
    pub async fn new(target: RdsTarget) -> Result<RdsSnapshots, RdsError> {
        let RdsTarget {
            region,
            endpoint,
            resource,
            credentials,
            max_attempts,
        } = target;
        let config = |problem: String| RdsError::Config { problem };
        if region.is_empty() {
            return Err(config(
                "no region is configured: set the region of the DB instance or cluster (e.g. \
                 \"eu-west-1\")"
                    .into(),
            ));
        }
        let what = if resource.is_cluster() {
            "DB cluster identifier"
        } else {
            "DB instance identifier"
        };
        crate::validate_identifier(what, resource.identifier(), MAX_DATABASE_ID).map_err(config)?;
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(config(format!(
                    "the endpoint {endpoint:?} is not an http:// or https:// URL"
                )));
            }
        }
        if max_attempts == 0 {
            return Err(config("max_attempts must be at least 1".into()));
        }

        // HTTPS with rustls on ring (no aws-lc, no legacy hyper); plain HTTP works too.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let RdsCredentials::Static {
            access_key_id,
            secret_access_key,
        } = &credentials
        {
            let id =
                read_secret(access_key_id).map_err(|p| config(format!("access key id: {p}")))?;
            let secret = read_secret(secret_access_key)
                .map_err(|p| config(format!("secret access key: {p}")))?;
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "backupd-config",
            ));
        }
        let sdk_config = loader.load().await;
        let client = client_for(&sdk_config, &region, endpoint.as_deref());
        Ok(RdsSnapshots {
            client,
            sdk_config,
            region,
            endpoint,
            resource,
        })
    }

    /// The same resource, credentials and endpoint in `region`: where copies made by
    /// [`RdsSnapshots::copy_snapshot`] to `region` are described, listed, deleted and
    /// restored.
    pub fn in_region(&self, region: &str) -> RdsSnapshots {
        RdsSnapshots {
            client: client_for(&self.sdk_config, region, self.endpoint.as_deref()),
            sdk_config: self.sdk_config.clone(),
            region: region.to_owned(),
            endpoint: self.endpoint.clone(),
            resource: self.resource.clone(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn resource(&self) -> &RdsResource {
        &self.resource
    }

    /// The SDK client, for what this crate does not wrap (tests create instances with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn called(&self, operation: &'static str) -> Called<'_> {
        Called {
            operation,
            region: &self.region,
            endpoint: self.endpoint.as_deref(),
        }
    }

    /// Runs one request unless `cancel` fires first; `left_behind` says what a cancelled
    /// request may leave in AWS.
    pub(crate) async fn unless_cancelled<T>(
        &self,
        operation: &'static str,
        cancel: &CancellationToken,
        left_behind: impl FnOnce() -> String,
        request: impl Future<Output = Result<T, RdsError>>,
    ) -> Result<T, RdsError> {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(RdsError::Cancelled {
                operation,
                region: self.region.clone(),
                left_behind: left_behind(),
            }),
            result = request => result,
        }
    }
}

fn client_for(sdk_config: &SdkConfig, region: &str, endpoint: Option<&str>) -> Client {
    let mut config =
        aws_sdk_rds::config::Builder::from(sdk_config).region(Region::new(region.to_owned()));
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

fn read_secret(source: &SecretSource) -> Result<String, String> {
    let value = match source {
        SecretSource::Env(var) => std::env::var(var)
            .map_err(|e| format!("cannot read the environment variable {var}: {e}"))?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("the {source} is empty"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_targets_are_refused_before_any_request() {
        let instance = RdsResource::Instance("orders".into());
        let cases: Vec<(RdsTarget, &str)> = vec![
            (RdsTarget::new("", instance.clone()), "no region"),
            (
                RdsTarget::new("eu-west-1", RdsResource::Instance("9orders".into())),
                "DB instance identifier \"9orders\" must start with a letter",
            ),
            (
                RdsTarget::new("eu-west-1", RdsResource::Cluster("a--b".into())),
                "DB cluster identifier",
            ),
            (
                RdsTarget {
                    endpoint: Some("127.0.0.1:5000".into()),
                    ..RdsTarget::new("eu-west-1", instance.clone())
                },
                "not an http:// or https:// URL",
            ),
            (
                RdsTarget {
                    credentials: RdsCredentials::Static {
                        access_key_id: SecretSource::Env("BACKUPD_TEST_NO_SUCH_VAR".into()),
                        secret_access_key: SecretSource::Env("BACKUPD_TEST_NO_SUCH_VAR".into()),
                    },
                    ..RdsTarget::new("eu-west-1", instance.clone())
                },
                "access key id: cannot read the environment variable BACKUPD_TEST_NO_SUCH_VAR",
            ),
        ];
        for (target, problem) in cases {
            let err = RdsSnapshots::new(target).await.unwrap_err();
            assert!(matches!(err, RdsError::Config { .. }), "{err:?}");
            assert!(err.to_string().contains(problem), "{err}");
        }
    }

    #[tokio::test]
    async fn debug_shows_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        let secret = dir.path().join("secret");
        std::fs::write(&id, "AKIAEXAMPLEKEYID\n").unwrap();
        std::fs::write(&secret, "very-secret-access-key\n").unwrap();
        let snapshots = RdsSnapshots::new(RdsTarget {
            credentials: RdsCredentials::Static {
                access_key_id: SecretSource::File(id),
                secret_access_key: SecretSource::File(secret),
            },
            ..RdsTarget::new("eu-west-1", RdsResource::Instance("orders".into()))
        })
        .await
        .unwrap();
        let debug = format!("{snapshots:?} {:?}", snapshots.in_region("us-east-1"));
        assert!(!debug.contains("AKIAEXAMPLEKEYID"), "{debug}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(
            debug.contains("eu-west-1") && debug.contains("us-east-1"),
            "{debug}"
        );
    }
}
