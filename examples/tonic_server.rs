//! The standard gRPC health service (`grpc.health.v1.Health`, from
//! tonic-health) made multi-tenant: `TenancyLayer` reads the tenant from the
//! `x-tenant-id` metadata, `AdmissionLayer` applies the rate limit
//! `api_calls_per_minute` and the concurrency limit `concurrent_executions`
//! of the tenant's plan in `examples/plans.toml` (free: 60 calls a minute,
//! 2 calls in flight; a `Watch` stream holds its slot while it is open).
//!
//! The layers are plain tower layers; the `tonic` feature adds the rich error
//! details (`ErrorInfo`, `QuotaFailure`, `RetryInfo` in
//! `grpc-status-details-bin`) to every refusal, so the example requires it.
//!
//! ```sh
//! cargo run --features tonic --example tonic_server                  # serves on 127.0.0.1:50051
//! cargo run --features tonic --example grpc_client -- acme           # acme: SERVING (ratelimit: ...)
//! cargo run --features tonic --example grpc_client -- nobody         # PermissionDenied (7): tenant "nobody" is unknown
//! cargo run --features tonic --example grpc_client -- acme 61        # the 61st call: ResourceExhausted (8)
//! cargo run --features tonic --example grpc_client -- acme watch     # holds one of acme's 2 slots until Ctrl-C
//! ```
//!
//! With [grpcurl](https://github.com/fullstorydev/grpcurl): the server has no
//! reflection, so it writes the health service's descriptors to a protoset
//! file at start-up and prints the command, e.g.
//!
//! ```sh
//! grpcurl -plaintext -protoset /tmp/grpc_health_v1.protoset \
//!     -H 'x-tenant-id: acme' 127.0.0.1:50051 grpc.health.v1.Health/Check
//! ```
//!
//! (or [grpc_health_probe](https://github.com/grpc-ecosystem/grpc-health-probe):
//! `grpc_health_probe -addr=127.0.0.1:50051 -rpc-header=x-tenant-id:acme`).
//!
//! Environment: `ADDR` (default `127.0.0.1:50051`), `PLANS` (default the
//! shipped `examples/plans.toml`).

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::Server;
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{Catalog, MemoryDirectory, TenancyLayer};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_tenancy=info".into()),
        )
        .init();
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ADDR {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    let plans = std::env::var("PLANS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml").into());
    let catalog = match Catalog::from_path(&plans) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot load {plans}: {e}");
            std::process::exit(2);
        }
    };

    // The health service reports the server itself ("") as SERVING.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let store = Arc::new(MemoryStore::new());
    let router = Server::builder()
        // gRPC metadata travels as HTTP/2 headers: the header resolver reads it.
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            MemoryDirectory::from_catalog(&catalog),
        ))
        // Every counter rule in one layer: one store call per request.
        .layer(
            AdmissionLayer::new(store)
                .rule(Rule::rate("api_calls_per_minute"))
                .rule(Rule::concurrency("concurrent_executions")),
        )
        .add_service(health);

    let protoset = std::env::temp_dir().join("grpc_health_v1.protoset");
    let protoset = std::fs::write(&protoset, tonic_health::pb::FILE_DESCRIPTOR_SET)
        .ok()
        .map(|()| protoset.display().to_string());

    println!(
        "gRPC health service on {addr} with {} tenants from {plans}",
        catalog.tenants().len()
    );
    println!("try: cargo run --features tonic --example grpc_client -- acme");
    if let Some(protoset) = protoset {
        println!(
            " or: grpcurl -plaintext -protoset {protoset} -H 'x-tenant-id: acme' {addr} grpc.health.v1.Health/Check"
        );
    }

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = router.serve_with_shutdown(addr, shutdown).await {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}
