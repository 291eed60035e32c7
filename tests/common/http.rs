//! Real sockets for tests: serve an axum router on a free loopback port and
//! call it with a real HTTP/1 client (hyper-util).
#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

/// A server on 127.0.0.1:<free port>, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with the given headers.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::new(Bytes::new())).unwrap()).await
}

/// RateLimit: "name";r=12;t=30 → (name, r, t)
pub fn parse_ratelimit(value: &str) -> (String, u64, u64) {
    let mut parts = value.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_string();
    let mut r = None;
    let mut t = None;
    for p in parts {
        let (k, v) = p.split_once('=').unwrap();
        match k {
            "r" => r = Some(v.parse().unwrap()),
            "t" => t = Some(v.parse().unwrap()),
            _ => {}
        }
    }
    (name, r.expect("r"), t.expect("t"))
}

/// RateLimit-Policy: "name";q=60;w=60 → (name, q, w)
pub fn parse_policy(value: &str) -> (String, u64, Option<u64>) {
    let mut parts = value.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_string();
    let mut q = None;
    let mut w = None;
    for p in parts {
        let (k, v) = p.split_once('=').unwrap();
        match k {
            "q" => q = Some(v.parse().unwrap()),
            "w" => w = Some(v.parse().unwrap()),
            _ => {}
        }
    }
    (name, q.expect("q"), w)
}
