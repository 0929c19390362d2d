//! The proxy's own etcd credentials (`basicAuth`): a token fetched with Authenticate,
//! cached, and fetched again when etcd reports it invalid.

use arc_swap::ArcSwapOption;
use std::sync::Arc;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Secret;
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::AuthenticateRequest;

pub struct TokenSource {
    username: String,
    password: Secret,
    cached: ArcSwapOption<AsciiMetadataValue>,
    // Serialises refreshes so a burst of requests authenticates once.
    refresh: tokio::sync::Mutex<()>,
}

impl TokenSource {
    pub fn new(username: String, password: Secret) -> Self {
        TokenSource {
            username,
            password,
            cached: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn get(&self, channel: &Channel) -> Result<AsciiMetadataValue, Status> {
        if let Some(t) = self.cached.load_full() {
            return Ok((*t).clone());
        }
        let _guard = self.refresh.lock().await;
        if let Some(t) = self.cached.load_full() {
            return Ok((*t).clone());
        }
        let resp = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: self.username.clone(),
                password: self.password.expose().to_string(),
            })
            .await?;
        let token = AsciiMetadataValue::try_from(resp.into_inner().token)
            .map_err(|_| crate::error::ProxyError::BadToken.to_status())?;
        self.cached.store(Some(Arc::new(token.clone())));
        tracing::info!(user = %self.username, "authenticated to the datastore");
        Ok(token)
    }

    /// Forgets the token if it is still the one that was refused.
    pub fn invalidate(&self, used: &AsciiMetadataValue) {
        let current = self.cached.load_full();
        if current.as_deref() == Some(used) {
            self.cached.store(None);
        }
    }
}
