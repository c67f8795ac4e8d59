use super::*;
use crate::cache::BodyForm;
use std::time::Duration;

const KEY: CacheKey = CacheKey(7);

fn entry() -> Arc<Entry> {
    Arc::new(Entry {
        route: "chat".into(),
        status: 200,
        content_type: "text/event-stream".into(),
        form: BodyForm::Sse,
        body: Bytes::from_static(b"data: a\n\n"),
        stored_at_ms: 0,
        expires_at_ms: 1,
        max_expires_at_ms: 1,
        extend_ms: 0,
        upstream_ms: 0,
        tokens: 0,
    })
}

fn head() -> FlightHead {
    FlightHead {
        status: 200,
        content_type: "text/event-stream".into(),
        sse: true,
    }
}

fn leader(flights: &Flights) -> Leader {
    let Role::Leader(l) = flights.join(KEY) else {
        panic!("expected to lead")
    };
    l
}

fn follower(flights: &Flights) -> Follower {
    let Role::Follower(f) = flights.join(KEY) else {
        panic!("expected to follow")
    };
    f
}

fn chunk(i: usize) -> Bytes {
    Bytes::from(format!("c{i}"))
}

/// Reads chunks in order until the end; `Some(count)` on Complete, `None` on Failed.
async fn drain(mut f: Follower) -> Option<usize> {
    let mut n = 0;
    loop {
        match f.next().await {
            FlightEvent::Head(h) => assert_eq!((h, n), (head(), 0), "head comes first"),
            FlightEvent::Chunk(c) => {
                assert_eq!(c, chunk(n), "in order");
                n += 1;
            }
            FlightEvent::Complete(_) => return Some(n),
            FlightEvent::Failed => return None,
        }
    }
}

#[test]
fn first_join_leads_the_rest_follow_and_are_counted() {
    let flights = Flights::default();
    let l = leader(&flights);
    assert!(
        matches!(flights.join(CacheKey(8)), Role::Leader(_)),
        "keys are separate"
    );
    assert_eq!(
        (flights.len(), l.followers()),
        (1, 0),
        "the other leader was dropped"
    );
    let (a, b) = (follower(&flights), follower(&flights));
    assert_eq!(l.followers(), 2);
    drop(a);
    assert_eq!(l.followers(), 1);
    drop(b);
    assert_eq!(l.followers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_follower_gets_everything_in_order() {
    let flights = Flights::default();
    let l = leader(&flights);
    l.head(head());
    l.chunk(chunk(0));
    l.chunk(Bytes::new());
    l.chunk(chunk(1));
    let mut f = follower(&flights);
    let publish = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.chunk(chunk(2));
        l.complete(entry());
    });
    assert_eq!(f.next().await, FlightEvent::Head(head()));
    for i in 0..3 {
        assert_eq!(f.next().await, FlightEvent::Chunk(chunk(i)));
    }
    assert_eq!(f.next().await, FlightEvent::Complete(entry()));
    assert_eq!(
        f.next().await,
        FlightEvent::Complete(entry()),
        "end repeats"
    );
    publish.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_followers_all_receive_all_chunks() {
    let flights = Flights::default();
    let l = leader(&flights);
    let readers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(drain(follower(&flights))))
        .collect();
    assert_eq!(l.followers(), 10);
    l.head(head());
    for i in 0..20 {
        l.chunk(chunk(i));
        tokio::task::yield_now().await;
    }
    l.complete(entry());
    for r in readers {
        assert_eq!(r.await.unwrap(), Some(20));
    }
}

#[tokio::test]
async fn finished_skips_chunks_and_returns_the_entry() {
    let flights = Flights::default();
    let l = leader(&flights);
    let mut f = follower(&flights);
    l.chunk(chunk(0));
    let waiter = tokio::spawn(async move { (f.finished().await, f.next().await) });
    tokio::task::yield_now().await;
    l.chunk(chunk(1));
    l.complete(entry());
    let (got, then) = waiter.await.unwrap();
    assert_eq!(got, Some(entry()));
    assert_eq!(then, FlightEvent::Complete(entry()), "chunks stay skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_drop_or_abort_of_the_leader_fails_followers() {
    let flights = Arc::new(Flights::default());
    let l = leader(&flights);
    let (mut a, mut b) = (follower(&flights), follower(&flights));
    l.head(head());
    l.fail();
    assert_eq!(a.next().await, FlightEvent::Head(head()));
    assert_eq!(a.next().await, FlightEvent::Failed);
    assert_eq!(a.next().await, FlightEvent::Failed, "end repeats");
    assert_eq!(b.finished().await, None);

    let l = leader(&flights);
    let f = follower(&flights);
    l.chunk(chunk(0));
    drop(l);
    assert_eq!(drain(f).await, None);
    assert!(flights.is_empty());

    let l = leader(&flights);
    let mut f = follower(&flights);
    let task = tokio::spawn(async move {
        l.chunk(chunk(0));
        std::future::pending::<()>().await;
        drop(l);
    });
    assert_eq!(f.next().await, FlightEvent::Chunk(chunk(0)));
    task.abort();
    assert_eq!(f.finished().await, None);
}

#[test]
fn after_the_end_join_leads_a_new_flight_and_the_old_leaves_it_alone() {
    let flights = Flights::default();
    let l = leader(&flights);
    let _f = follower(&flights);
    l.complete(entry());
    assert!(flights.is_empty());
    let again = leader(&flights);
    again.fail();
    let old = leader(&flights);
    // A newer flight for the same key, as if `old` had been removed and replaced.
    lock(&flights.table).clear();
    let newer = leader(&flights);
    old.fail();
    let kept = lock(&flights.table).get(&KEY).cloned();
    assert!(kept.is_some_and(|f| Arc::ptr_eq(&f, &newer.flight)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lost_wakeups_under_stress() {
    const N: usize = 1000;
    for _round in 0..5 {
        let flights = Flights::default();
        let l = leader(&flights);
        let readers: Vec<_> = (0..8)
            .map(|_| tokio::spawn(drain(follower(&flights))))
            .collect();
        let writer = tokio::spawn(async move {
            for i in 0..N {
                l.chunk(chunk(i));
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            l.complete(entry());
        });
        for r in readers {
            let n = tokio::time::timeout(Duration::from_secs(10), r).await;
            assert_eq!(n.expect("a follower hung: lost wake-up").unwrap(), Some(N));
        }
        writer.await.unwrap();
    }
}
