//! A tiny client for `examples/tonic_server.rs`: calls
//! `grpc.health.v1.Health/Check` with an `x-tenant-id` and prints the
//! result, the gRPC code and message, the rich error details of a refusal
//! (`ErrorInfo`, `QuotaFailure`, `RetryInfo`) and the rate-limit metadata.
//! Needs the `tonic` feature, as the server does.
//!
//! ```sh
//! cargo run --features tonic --example tonic_server   # in another terminal
//! cargo run --features tonic --example grpc_client -- [TENANT] [N | watch]
//!
//! cargo run --features tonic --example grpc_client -- acme          # acme: SERVING (ratelimit: "api_calls_per_minute";r=59;t=42)
//! cargo run --features tonic --example grpc_client                  # InvalidArgument (3): no tenant found in the request
//! cargo run --features tonic --example grpc_client -- umbrella      # PermissionDenied (7): tenant "umbrella" is suspended
//! cargo run --features tonic --example grpc_client -- acme 61       # 61 calls; the last: ResourceExhausted (8) ...
//! cargo run --features tonic --example grpc_client -- acme watch    # a Watch stream, open until Ctrl-C
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
use tonic_types::StatusExt;

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
                eprintln!("cannot connect to {addr}: {e} (is `cargo run --features tonic --example tonic_server` running?)");
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

/// `Code (n): message [details] (metadata)`.
fn describe(status: &Status) -> String {
    format!(
        "{:?} ({}): {}{}{}",
        status.code(),
        status.code() as i32,
        status.message(),
        details(status),
        fields(status.metadata())
    )
}

/// The rich error details (`grpc-status-details-bin`), if any:
/// ` [ErrorInfo RATE_LIMITED; QuotaFailure api_calls_per_minute; RetryInfo 42s]`.
fn details(status: &Status) -> String {
    let Ok(details) = status.check_error_details() else {
        return " [undecodable grpc-status-details-bin]".into();
    };
    let mut found = Vec::new();
    if let Some(info) = details.error_info() {
        found.push(format!("ErrorInfo {}", info.reason));
    }
    if let Some(quota) = details.quota_failure() {
        let subjects: Vec<&str> = quota
            .violations
            .iter()
            .map(|v| v.subject.as_str())
            .collect();
        found.push(format!("QuotaFailure {}", subjects.join(", ")));
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        found.push(format!("RetryInfo {}s", delay.as_secs()));
    }
    if found.is_empty() {
        String::new()
    } else {
        format!(" [{}]", found.join("; "))
    }
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
