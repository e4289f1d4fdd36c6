//! A real HTTP receiver for webhooks and authorization hooks: it records every request
//! (headers and body, of any method: a followed redirect's GET is seen too) and answers as the test says (status, body, delay).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;

/// What the receiver answers to one request.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    /// A `Location` header to answer with (with a 3xx status: a redirect).
    pub location: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: String::new(),
            delay: Duration::ZERO,
            location: None,
        }
    }

    /// A redirect: `status` (a 3xx) sending the request on to `to`.
    pub fn redirect(status: u16, to: &str) -> Self {
        Reply {
            location: Some(to.to_owned()),
            ..Reply::status(status)
        }
    }

    pub fn json(v: Value) -> Self {
        Reply {
            status: 200,
            body: v.to_string(),
            delay: Duration::ZERO,
            location: None,
        }
    }
}

type Answer = dyn Fn(&Value, usize) -> Reply + Send + Sync;

/// One request received.
#[derive(Clone)]
pub struct Got {
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Got>>>,
    pub url: String,
}

impl Receiver {
    /// Answers the statuses `answers` in order, then 200.
    pub async fn start(answers: Vec<u16>) -> Self {
        let answers = Mutex::new(answers);
        Self::with(move |_, _| {
            let mut a = answers.lock();
            Reply::status(if a.is_empty() { 200 } else { a.remove(0) })
        })
        .await
    }

    /// Answers with `answer(body, n)`, `n` counting the requests from 0.
    pub async fn with(answer: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static) -> Self {
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let state = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::any(move |headers: axum::http::HeaderMap, body: String| {
                let (state, answer) = (state.clone(), answer.clone());
                async move {
                    let n = {
                        let mut g = state.lock();
                        g.push(Got {
                            headers,
                            body: body.clone(),
                        });
                        g.len() - 1
                    };
                    let v = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let reply = answer(&v, n);
                    if !reply.delay.is_zero() {
                        tokio::time::sleep(reply.delay).await;
                    }
                    let mut headers = axum::http::HeaderMap::new();
                    headers.insert("content-type", "application/json".parse().unwrap());
                    if let Some(to) = &reply.location {
                        headers.insert("location", to.parse().unwrap());
                    }
                    (
                        axum::http::StatusCode::from_u16(reply.status).unwrap(),
                        headers,
                        reply.body,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { got, url }
    }

    /// Every webhook event received so far, in order (whatever the receiver answered).
    pub fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .iter()
            .flat_map(|g| g.json()["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (at most 15 s) until the events received satisfy `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let e = self.events();
                if pred(&e) {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what}: got {:?}", self.events()))
    }
}
