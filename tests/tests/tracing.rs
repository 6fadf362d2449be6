//! One rollout is one trace: the coordinator's `assign` spans and the agents' `execute_step` spans, exported over
//! OTLP to a receiver in this test, share the plan's trace id; each agent `execute_assignment` is a child of its
//! `assign`, and each migration's `execute_step` a child of that.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_core::Engine::Sqlite;
use flotilla_tests::fleet::{Fleet, FleetTarget};
use flotilla_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

/// A span as received: service, name, trace id, span id, parent span id (hex).
type Received = (String, String, String, String, String);

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push((
                        service.clone(),
                        span.name,
                        hex(&span.trace_id),
                        hex(&span.span_id),
                        hex(&span.parent_span_id),
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_is_one_trace_across_coordinator_and_agents() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream_incoming(listener)),
    );

    let dbs = futures_util::future::join_all((0..2).map(|_| TestDb::new(Sqlite))).await;
    let env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), format!("http://127.0.0.1:{port}"))];
    let mut fleet = Fleet::start_with(&[("agent-1", "sq-*")], None, 5, env).await;
    let targets: Vec<FleetTarget> =
        dbs.iter().enumerate().map(|(i, db)| FleetTarget::new(&format!("sq-{i}"), &db.url, &[("env", "t")])).collect();
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "t", "CREATE TABLE t (id INT);", "DROP TABLE t;");
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&id, "succeeded").await;
    fleet.stop().await; // SIGTERM: each process flushes its spans on the way out
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();

    let spans = receiver.0.lock().expect("lock").clone();
    let trace = flotilla_proto::telemetry::trace_id(&id).to_string();
    let assigns: Vec<&Received> = spans.iter().filter(|s| s.1 == "assign").collect();
    let steps: Vec<&Received> = spans.iter().filter(|s| s.1 == "execute_assignment").collect();
    let migrations: Vec<&Received> = spans.iter().filter(|s| s.1 == "execute_step").collect();
    assert_eq!((assigns.len(), steps.len()), (2, 2), "{spans:#?}");
    for s in assigns.iter().chain(&steps) {
        assert_eq!(s.2, trace, "every span is in the plan's trace: {s:?}");
    }
    assert!(assigns.iter().all(|s| s.0.contains("flotilla-coordinator")));
    assert!(steps.iter().all(|s| s.0.contains("flotilla-agent")));
    for step in &steps {
        assert!(assigns.iter().any(|a| a.3 == step.4), "execute_assignment {step:?} is a child of an assign span");
    }
    assert_eq!(migrations.len(), 2, "one migration on each target");
    for m in &migrations {
        assert!(steps.iter().any(|s| s.3 == m.4), "execute_step {m:?} is a child of its assignment");
    }
    assert!(spans.iter().any(|s| s.1 == "record_result" && s.2 == trace), "the result report joins the trace too");
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    })
}
