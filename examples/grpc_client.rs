//! A tiny client for `examples/tonic_server.rs`: calls
//! `grpc.health.v1.Health/Check` with an `x-tenant-id` and prints the
//! result, the gRPC code and message, and the rate-limit metadata.
//!
//! ```sh
//! cargo run --example grpc_client -- [TENANT] [N | watch]
//!
//! cargo run --example grpc_client -- acme          # acme: SERVING (ratelimit: "api_calls_per_minute";r=59;t=42)
//! cargo run --example grpc_client                  # InvalidArgument (3): no tenant found in the request
//! cargo run --example grpc_client -- umbrella      # PermissionDenied (7): tenant "umbrella" is suspended
//! cargo run --example grpc_client -- acme 61       # 61 calls; the last: ResourceExhausted (8) ...
//! cargo run --example grpc_client -- acme watch    # a Watch stream, open until Ctrl-C
//! ```
//!
//! `ADDR` sets the server (default `http://127.0.0.1:50051`). The exit code
//! is 1 when the (last) call failed.

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let tenant = args.next().filter(|t| !t.is_empty());
    let mode = args.next().unwrap_or_else(|| "1".into());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "http://127.0.0.1:50051".into());

    let channel = match Channel::from_shared(addr.clone()) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => {
                eprintln!("cannot connect to {addr}: {e} (is `cargo run --example tonic_server` running?)");
                std::process::exit(2);
            }
        },
        Err(e) => {
            eprintln!("bad ADDR {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    let mut client = HealthClient::new(channel);
    let who = tenant.as_deref().unwrap_or("(no tenant)");

    if mode == "watch" {
        let mut stream = match client.watch(request(tenant.as_deref())).await {
            Ok(response) => response.into_inner(),
            Err(status) => fail(who, &status),
        };
        println!("{who}: watching (Ctrl-C to stop; the stream holds a concurrency slot)");
        loop {
            match stream.message().await {
                Ok(Some(msg)) => println!("{who}: {}", serving(msg.status)),
                Ok(None) => return println!("{who}: stream ended"),
                Err(status) => fail(who, &status),
            }
        }
    }

    let n: u32 = mode.parse().unwrap_or(1).max(1);
    let mut failed = false;
    for i in 1..=n {
        let prefix = if n > 1 {
            format!("#{i} ")
        } else {
            String::new()
        };
        match client.check(request(tenant.as_deref())).await {
            Ok(response) => {
                failed = false;
                println!(
                    "{prefix}{who}: {}{}",
                    serving(response.get_ref().status),
                    fields(response.metadata())
                );
            }
            Err(status) => {
                failed = true;
                println!("{prefix}{who}: {}", describe(&status));
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

fn request(tenant: Option<&str>) -> Request<HealthCheckRequest> {
    let mut req = Request::new(HealthCheckRequest::default());
    if let Some(tenant) = tenant {
        match tenant.parse() {
            Ok(value) => {
                req.metadata_mut().insert("x-tenant-id", value);
            }
            Err(_) => eprintln!("tenant {tenant:?} cannot be sent as ASCII metadata; sending none"),
        }
    }
    req
}

fn serving(status: i32) -> &'static str {
    ServingStatus::try_from(status).map_or("?", |s| s.as_str_name())
}

/// `Code (n): message [metadata]`.
fn describe(status: &Status) -> String {
    format!(
        "{:?} ({}): {}{}",
        status.code(),
        status.code() as i32,
        status.message(),
        fields(status.metadata())
    )
}

fn fail(who: &str, status: &Status) -> ! {
    println!("{who}: {}", describe(status));
    std::process::exit(1);
}

/// The rate-limit metadata, if any: ` (ratelimit: ..., retry-after: ...)`.
fn fields(metadata: &MetadataMap) -> String {
    let found: Vec<String> = ["ratelimit", "retry-after"]
        .iter()
        .filter_map(|k| {
            let v = metadata.get(*k)?.to_str().ok()?;
            Some(format!("{k}: {v}"))
        })
        .collect();
    if found.is_empty() {
        String::new()
    } else {
        format!(" ({})", found.join(", "))
    }
}
