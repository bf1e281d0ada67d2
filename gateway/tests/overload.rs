//! The node's run slots (`Policy::max_running`, `flint serve
//! --max-running`): at most that many VMs run requests at once, all
//! services together; the rest wait in arrival order and are answered
//! once a slot frees, instead of each restoring a VM at once.

mod common;

use common::*;
use flint_gateway::Policy;

/// A 2-second spin holds the only slot: a greet request sent after it
/// waits (the gauge shows it) and is answered after the spin's 504; with
/// two slots the same hello is answered while the spin still runs.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_run_slots_wait_for_one() {
    for slots in [1, 2] {
        let services = [
            manifest("spin", "spin", "      timeoutSeconds: 2\n"),
            manifest("hello", "greet", ""),
        ];
        let policy = Policy {
            max_running: slots,
            ..Policy::default()
        };
        let gw = start_with_policy(&services, 1 << 20, policy).await;
        let addr = gw.addr;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t1 = tx.clone();
        tokio::spawn(async move {
            let (status, ..) = http(addr, "GET", "spin.default.example.com", "/", b"").await;
            t1.send(("spin", status)).unwrap();
        });
        // The spin has its slot long before this.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        tokio::spawn(async move {
            let (status, ..) = http(addr, "GET", "hello.default.example.com", "/", b"").await;
            tx.send(("hello", status)).unwrap();
        });
        if slots == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let (_, _, metrics) = http(gw.admin, "GET", "x", "/metrics", b"").await;
            let metrics = String::from_utf8(metrics).unwrap();
            assert!(
                metrics.contains("flint_requests_waiting_for_vm 1\n"),
                "{metrics}"
            );
            assert!(metrics.contains("flint_run_slots 1\n"), "{metrics}");
        }
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        let expected = if slots == 1 {
            [("spin", 504), ("hello", 200)]
        } else {
            [("hello", 200), ("spin", 504)]
        };
        assert_eq!([first, second], expected, "with {slots} slot(s)");
    }
}
