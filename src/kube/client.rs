//! A client for the API server: from a kubeconfig (tests, debugging) or in-cluster.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::kube::node_update::UntaintError;

/// Builds a client from an explicit kubeconfig (tests, debugging) or the in-cluster config
/// (the projected service-account token at the standard path).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, UntaintError> {
    let err = |e: &dyn std::fmt::Display| UntaintError::Client(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => Config::infer().await.map_err(|e| err(&e))?,
    };
    Client::try_from(config).map_err(|e| err(&e))
}
