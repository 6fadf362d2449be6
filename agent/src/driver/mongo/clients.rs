//! One `Client` per MongoDB deployment, shared by every target on it. A client monitors its servers and pools its
//! connections; a hundred tenant databases on one replica set then cost one set of monitors and one pool, not a
//! hundred (measured by `bench/fleet`'s `mongo` scenario: about 140 KiB of agent heap per target with a client each).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use mongodb::options::ClientOptions;
use mongodb::Client;

use super::super::{ConnectOptions, DriverError};

/// Clients by deployment (see [`deployment`]), with how many drivers use each.
static CLIENTS: LazyLock<Mutex<HashMap<String, (Client, usize)>>> = LazyLock::new(Mutex::default);

/// A driver's use of a shared client: the last one to go takes the client out of the registry.
pub(super) struct SharedClient {
    client: Client,
    key: String,
    released: bool,
}

impl SharedClient {
    /// The client for the deployment `url` names, made on first use; and the database `url` names.
    pub(super) async fn get(url: &str, options: &ConnectOptions) -> Result<(SharedClient, String), DriverError> {
        let mut client_options = ClientOptions::parse(url).await.map_err(|e| DriverError::BadUrl(e.to_string()))?;
        let name = client_options.default_database.clone().ok_or_else(|| {
            DriverError::BadUrl("a MongoDB URL must name the database: mongodb://host:port/DATABASE".into())
        })?;
        let key = deployment(url, &client_options, options);
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        let client = match clients.get_mut(&key) {
            Some((client, users)) => {
                *users += 1;
                client.clone()
            }
            None => {
                client_options.app_name.get_or_insert_with(|| "flotilla".into());
                client_options.server_selection_timeout.get_or_insert(options.connect_timeout);
                client_options.connect_timeout.get_or_insert(options.connect_timeout);
                // The driver's default of 10 is for one database; this pool serves every target on the deployment
                // (the drivers' specification says 100). Connections open only as work needs them.
                client_options.max_pool_size.get_or_insert(100);
                let client = Client::with_options(client_options).map_err(|e| DriverError::Connect(e.to_string()))?;
                clients.insert(key.clone(), (client.clone(), 1));
                client
            }
        };
        Ok((SharedClient { client, key, released: false }, name))
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Gives this use back; `true` when it was the last, and the caller should shut the client down.
    fn release(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return false;
        }
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get_mut(&self.key) {
            Some((_, users)) if *users > 1 => {
                *users -= 1;
                false
            }
            Some(_) => {
                clients.remove(&self.key);
                true
            }
            None => false,
        }
    }

    /// Gives this use back, and shuts the client down if it was the last (once every session of it is dropped).
    pub(super) async fn close(mut self) {
        if self.release() {
            self.client.clone().shutdown().await;
        }
    }
}

impl Drop for SharedClient {
    fn drop(&mut self) {
        self.release();
    }
}

/// What makes two URLs one deployment to the same user: the URL without its database, and the database the user
/// authenticates against (which, without `authSource`, is the URL's database), and the connect timeout.
fn deployment(url: &str, parsed: &ClientOptions, options: &ConnectOptions) -> String {
    let without_database = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
            let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
            format!("{scheme}://{hosts}/?{query}")
        }
        None => url.to_string(),
    };
    let auth_source = parsed.credential.as_ref().and_then(|c| c.source.as_deref()).unwrap_or("");
    format!("{without_database}|{auth_source}|{:?}", options.connect_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn key(url: &str) -> String {
        let parsed = ClientOptions::parse(url).await.expect("url");
        deployment(url, &parsed, &ConnectOptions::default())
    }

    #[tokio::test]
    async fn databases_of_one_deployment_share_a_client_unless_their_users_authenticate_apart() {
        let a = key("mongodb://h1:27017,h2:27017/tenant_a?replicaSet=rs0").await;
        assert_eq!(a, key("mongodb://h1:27017,h2:27017/tenant_b?replicaSet=rs0").await);
        assert_ne!(a, key("mongodb://h1:27017,h2:27017/tenant_a?replicaSet=rs1").await, "another replica set");
        assert_ne!(a, key("mongodb://h3:27017/tenant_a?replicaSet=rs0").await, "other hosts");
        // A user with no authSource authenticates against the URL's database: one client per database then.
        let (x, y) = (key("mongodb://app:pw@h1/tenant_a").await, key("mongodb://app:pw@h1/tenant_b").await);
        assert_ne!(x, y);
        let shared = |db: &str| format!("mongodb://app:pw@h1/{db}?authSource=admin");
        assert_eq!(key(&shared("tenant_a")).await, key(&shared("tenant_b")).await);
        assert_ne!(
            key(&shared("tenant_a")).await,
            key("mongodb://other:pw@h1/tenant_a?authSource=admin").await,
            "another user"
        );
    }
}
