//! Many replicas on one Postgres and one Redis, as real processes: people on
//! different replicas chat as if on one server, and killing a replica, restarting
//! Redis or cutting a replica off from Redis loses nothing. Every scenario ends with
//! the ledger's check over all sends and receives: nothing lost, nothing shown
//! twice, each conversation gapless and in order, watermarks never going back.

mod fleet;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_sdk::{ConnectionState, Event, SessionSender, Target};
use chat_tests::fault_proxy::Mode;
use chat_tests::{DEADLINE, FaultProxy, Ledger, RedisCluster, RedisServer};
use fleet::{Fleet, POOL_SIZE, PRESENCE_TIMEOUT, Person};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;

/// Generous: a debug build on two busy cores, after a fault.
const CONVERGE: Duration = Duration::from_secs(60);

/// Sends to `to` one message after another, paced, until `stop`; the number acked so
/// far is on the returned watch.
fn steady_stream(
    sender: SessionSender,
    ledger: Ledger,
    from: &str,
    to: &str,
    pace: Duration,
    stop: CancellationToken,
) -> (JoinHandle<()>, watch::Receiver<usize>) {
    let (acked_tx, acked) = watch::channel(0);
    let (from, to) = (from.to_owned(), to.to_owned());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(pace);
        let mut i = 0usize;
        while !stop.is_cancelled() {
            tick.tick().await;
            i += 1;
            let id = chat_sdk::new_client_msg_id();
            let text = format!("{from} to {to} #{i}");
            ledger.sent("", &id, &text);
            let result = tokio::select! {
                r = sender.send_with_id(Target::User(to.clone()), &id, &text) => r,
                // A send still waiting when the scenario ends is recorded as failed.
                _ = stop.cancelled() => break,
            };
            match result {
                Ok(ack) => {
                    ledger.ack(&ack);
                    acked_tx.send_modify(|n| *n += 1);
                }
                Err(e) => ledger.failed(&id, e.code()),
            }
        }
    });
    (task, acked)
}

async fn wait_acked(acked: &mut watch::Receiver<usize>, n: usize) {
    tokio::time::timeout(CONVERGE, acked.wait_for(|&a| a >= n))
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} sends were acked in time"))
        .expect("stream task");
}

/// Stops the stream once `more` further sends are acked, and waits for it.
async fn finish(
    stream: (JoinHandle<()>, watch::Receiver<usize>),
    stop: CancellationToken,
    more: usize,
) {
    let (task, mut acked) = stream;
    let now = *acked.borrow();
    wait_acked(&mut acked, now + more).await;
    stop.cancel();
    task.await.expect("stream task");
}

async fn health(url: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        client.check(tonic_health::pb::HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

async fn wait_health(url: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while health(url).await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never reported {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn converge_and_check(ledger: &Ledger) {
    let arrived = ledger.wait_until_received(CONVERGE).await;
    let report = ledger.check();
    // The report's own summary names the first few problems.
    report.assert_clean();
    assert!(arrived, "not everything arrived");
    assert!(report.acked > 0, "the scenario acked nothing");
}

// --- live chat across replicas ---

async fn live_chat_across_replicas(redis_url: &str) {
    let fleet = Fleet::start(2, redis_url).await;
    let (alex_client, alex_creds) = fleet.register(0, "alex").await;
    let (_, riya_creds) = fleet.register(1, "riya").await;
    let ledger = Ledger::new();
    let alex = Person::connect("alex", &alex_creds, vec![fleet.url(0)], &ledger).await;
    let riya = Person::connect("riya", &riya_creds, vec![fleet.url(1)], &ledger).await;
    alex.wait_connected(1).await;
    riya.wait_connected(1).await;

    let ack = alex
        .send(&ledger, "riya", "hello from replica 1")
        .await
        .expect("send acked");
    ledger.expect("riya", &ack.conversation_id);
    riya.expect("alex's message", |e| match e {
        Event::Message(m) if m.text == "hello from replica 1" => Some(()),
        _ => None,
    })
    .await;
    // Riya's SDK acks delivery on replica 2; the tick reaches Alex on replica 1.
    alex.expect("delivered", |e| match e {
        Event::Receipt(r) if r.delivered_seq >= ack.seq => Some(()),
        _ => None,
    })
    .await;
    riya.sender
        .mark_read(&ack.conversation_id, ack.seq)
        .await
        .expect("mark read");
    alex.expect("read", |e| match e {
        Event::Receipt(r) if r.read_seq >= ack.seq => Some(()),
        _ => None,
    })
    .await;

    let reply = riya
        .send(&ledger, "alex", "hi from replica 2")
        .await
        .expect("reply acked");
    alex.expect("riya's reply", |e| match e {
        Event::Message(m) if m.seq == reply.seq => Some(()),
        _ => None,
    })
    .await;
    riya.sender
        .typing(&ack.conversation_id, true)
        .await
        .expect("typing");
    alex.expect("riya typing", |e| match e {
        Event::Typing(t) if t.typing => Some(()),
        _ => None,
    })
    .await;

    // Replica 1 has no session of Riya's: it asks the registry.
    let presence = alex_client.presence(&["riya"]).await.expect("presence");
    assert!(presence[0].online, "riya shows online on the other replica");
    riya.close();
    let last_seen = alex
        .expect("riya offline", |e| match e {
            Event::Presence(p) if !p.online => Some(p.last_seen),
            _ => None,
        })
        .await;
    assert!(last_seen.is_some(), "offline comes with last seen");
    let presence = alex_client.presence(&["riya"]).await.expect("presence");
    assert!(!presence[0].online && presence[0].last_seen.is_some());

    ledger.assert_clean();
    alex.close();
}

#[tokio::test]
async fn live_chat_across_replicas_on_standalone_redis() {
    let redis = RedisServer::start().await;
    live_chat_across_replicas(&redis.url()).await;
}

#[tokio::test]
async fn live_chat_across_replicas_on_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let nodes: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    live_chat_across_replicas(&format!("redis+cluster://{}", nodes.join(","))).await;
}

// --- a replica dies ---

#[tokio::test]
async fn sigkill_of_the_receivers_replica_loses_nothing() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(2, &redis.url()).await;
    let (_, alex_creds) = fleet.register(0, "alex").await;
    let (_, riya_creds) = fleet.register(1, "riya").await;
    let (_, sam_creds) = fleet.register(1, "sam").await;
    let ledger = Ledger::new();
    let alex = Person::connect("alex", &alex_creds, vec![fleet.url(0)], &ledger).await;
    let riya = Person::connect(
        "riya",
        &riya_creds,
        vec![fleet.url(1), fleet.url(0)],
        &ledger,
    )
    .await;
    // Sam's device knows only replica 2: once it dies, Sam is gone for good.
    let sam = Person::connect("sam", &sam_creds, vec![fleet.url(1)], &ledger).await;
    riya.wait_connected(1).await;
    sam.wait_connected(1).await;
    let hello = alex.send(&ledger, "sam", "hi sam").await.expect("acked");
    ledger.expect("sam", &hello.conversation_id);
    sam.expect("hello", |e| matches!(e, Event::Message(_)).then_some(()))
        .await;

    let first = alex.send(&ledger, "riya", "first").await.expect("acked");
    ledger.expect("riya", &first.conversation_id);
    let stop = CancellationToken::new();
    let mut stream = steady_stream(
        alex.sender.clone(),
        ledger.clone(),
        "alex",
        "riya",
        Duration::from_millis(10),
        stop.clone(),
    );
    wait_acked(&mut stream.1, 60).await;
    let killed = fleet.url(1);
    fleet.replica(1).sigkill().await;
    finish(stream, stop, 100).await;
    converge_and_check(&ledger).await;

    let states = riya.states();
    assert!(
        states.iter().any(
            |s| matches!(s, ConnectionState::Connected { address } if *address == fleet.url(0))
        ),
        "riya moved to the surviving replica: {states:?} (killed {killed})"
    );
    // Sam did not come back: Alex sees him offline once his heartbeats expire.
    let started = tokio::time::Instant::now();
    alex.expect("sam offline", |e| match e {
        Event::Presence(p) if !p.online && p.user.as_ref().is_some_and(|u| u.name == "sam") => {
            Some(())
        }
        _ => None,
    })
    .await;
    assert!(
        started.elapsed() < PRESENCE_TIMEOUT + DEADLINE,
        "offline within the presence timeout"
    );
    alex.close();
    riya.close();
    sam.close();
}

#[tokio::test]
async fn sigterm_under_load_finishes_or_fails_retryably() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(2, &redis.url()).await;
    let (_, alex_creds) = fleet.register(0, "alex").await;
    let (_, riya_creds) = fleet.register(0, "riya").await;
    let ledger = Ledger::new();
    // Both on replica 2 first, falling back to replica 1.
    let addresses = vec![fleet.url(1), fleet.url(0)];
    let alex = Person::connect("alex", &alex_creds, addresses.clone(), &ledger).await;
    let riya = Person::connect("riya", &riya_creds, addresses, &ledger).await;
    alex.wait_connected(1).await;
    riya.wait_connected(1).await;
    let first = alex.send(&ledger, "riya", "first").await.expect("acked");
    ledger.expect("riya", &first.conversation_id);

    let stop = CancellationToken::new();
    let mut stream = steady_stream(
        alex.sender.clone(),
        ledger.clone(),
        "alex",
        "riya",
        Duration::from_millis(5),
        stop.clone(),
    );
    wait_acked(&mut stream.1, 60).await;
    fleet.replica(1).sigterm().await;
    let status = fleet.replica(1).wait().await;
    assert!(status.success(), "a graceful stop exits cleanly: {status}");
    finish(stream, stop, 100).await;
    converge_and_check(&ledger).await;

    for person in [&alex, &riya] {
        let states = person.states();
        assert!(
            states.iter().any(|s| matches!(
                s,
                ConnectionState::Disconnected { reason, .. } if reason.starts_with("UNAVAILABLE")
            )),
            "{}'s stream closed with a retryable status: {states:?}",
            person.name
        );
    }
    alex.close();
    riya.close();
}

// --- Redis fails ---

#[tokio::test]
async fn redis_killed_and_restarted_during_sends() {
    let mut redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &redis.url()).await;
    let (_, alex_creds) = fleet.register(0, "alex").await;
    let (_, riya_creds) = fleet.register(1, "riya").await;
    let ledger = Ledger::new();
    let alex = Person::connect("alex", &alex_creds, vec![fleet.url(0)], &ledger).await;
    let riya = Person::connect("riya", &riya_creds, vec![fleet.url(1)], &ledger).await;
    riya.wait_connected(1).await;
    let first = alex.send(&ledger, "riya", "first").await.expect("acked");
    ledger.expect("riya", &first.conversation_id);
    let back = riya.send(&ledger, "alex", "back").await.expect("acked");
    ledger.expect("alex", &back.conversation_id);

    let stop = CancellationToken::new();
    let mut to_riya = steady_stream(
        alex.sender.clone(),
        ledger.clone(),
        "alex",
        "riya",
        Duration::from_millis(10),
        stop.clone(),
    );
    let to_alex = steady_stream(
        riya.sender.clone(),
        ledger.clone(),
        "riya",
        "alex",
        Duration::from_millis(25),
        stop.clone(),
    );
    wait_acked(&mut to_riya.1, 40).await;
    redis.kill().await;
    // Sends go on while Redis is away: they are stored, and health says NOT_SERVING
    // once the grace is over.
    wait_health(&fleet.url(0), ServingStatus::NotServing).await;
    let during = *to_riya.1.borrow();
    wait_acked(&mut to_riya.1, during + 30).await;
    redis.restart().await;
    wait_health(&fleet.url(0), ServingStatus::Serving).await;
    wait_health(&fleet.url(1), ServingStatus::Serving).await;
    finish(to_riya, stop.clone(), 50).await;
    finish(to_alex, stop, 0).await;
    converge_and_check(&ledger).await;

    // What an operator sees on each replica afterwards.
    for i in 0..2 {
        let metrics = fleet.replicas[i].as_ref().expect("running").metrics().await;
        for needle in [
            "chat_redis_connected 1",
            "chat_sessions 1",
            "chat_fanout_duration_seconds_bucket{path=\"local\"",
            "chat_fanout_duration_seconds_bucket{path=\"redis\"",
            "chat_redis_publishes_total{outcome=\"ok\"}",
            "chat_send_duration_seconds_bucket",
            "chat_message_deliveries_total",
        ] {
            assert!(
                metrics.contains(needle),
                "replica {i}: {needle} missing from\n{metrics}"
            );
        }
        let reconnects = metrics
            .lines()
            .find_map(|l| l.strip_prefix("chat_redis_reconnects_total "))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(reconnects >= 1.0, "replica {i} counted its redis reconnect");
    }
    alex.close();
    riya.close();
}

#[tokio::test]
async fn a_frozen_replica_is_left_for_another() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(2, &redis.url()).await;
    let (_, alex_creds) = fleet.register(0, "alex").await;
    let (_, riya_creds) = fleet.register(1, "riya").await;
    let ledger = Ledger::new();
    let alex = Person::connect("alex", &alex_creds, vec![fleet.url(0)], &ledger).await;
    let riya = Person::connect(
        "riya",
        &riya_creds,
        vec![fleet.url(1), fleet.url(0)],
        &ledger,
    )
    .await;
    riya.wait_connected(1).await;
    let first = alex.send(&ledger, "riya", "first").await.expect("acked");
    ledger.expect("riya", &first.conversation_id);
    let stop = CancellationToken::new();
    let mut stream = steady_stream(
        alex.sender.clone(),
        ledger.clone(),
        "alex",
        "riya",
        Duration::from_millis(10),
        stop.clone(),
    );
    wait_acked(&mut stream.1, 30).await;
    // Stopped, not dead: its sockets stay open and nothing answers. Only the silence
    // on the stream (no keep-alive within two heartbeat intervals) gives it away.
    fleet.replica(1).sigstop().await;
    finish(stream, stop, 60).await;
    converge_and_check(&ledger).await;
    riya.wait_connected(2).await;
    assert!(
        riya.states().iter().any(|s| matches!(
            s,
            ConnectionState::Disconnected { reason, .. } if reason.contains("nothing from the server")
        )),
        "the silence was noticed: {:?}",
        riya.states()
    );
    fleet.replica(1).sigcont().await;
    alex.close();
    riya.close();
}

#[tokio::test]
async fn replica_cut_off_from_redis_for_ten_seconds_then_healed() {
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.addr()).await;
    let mut fleet = Fleet::start(1, &redis.url()).await;
    // Replica 2 reaches Redis through the proxy, so it alone can be cut off.
    let cut = fleet.spawn(&proxy.url(), &[]).await;
    fleet.replicas.push(Some(cut));
    let (_, alex_creds) = fleet.register(0, "alex").await;
    let (_, riya_creds) = fleet.register(1, "riya").await;
    let (_, bob_creds) = fleet.register(0, "bob").await;
    let ledger = Ledger::new();
    let alex = Person::connect("alex", &alex_creds, vec![fleet.url(0)], &ledger).await;
    let riya = Person::connect("riya", &riya_creds, vec![fleet.url(1)], &ledger).await;
    let bob = Person::connect("bob", &bob_creds, vec![fleet.url(0)], &ledger).await;
    riya.wait_connected(1).await;
    bob.wait_connected(1).await;
    // Two conversations, one each way across the cut, so that neither side's own
    // sends reveal a gap in what it receives.
    let first = alex.send(&ledger, "riya", "first").await.expect("acked");
    ledger.expect("riya", &first.conversation_id);
    let to_bob = riya.send(&ledger, "bob", "hi bob").await.expect("acked");
    ledger.expect("bob", &to_bob.conversation_id);

    let stop = CancellationToken::new();
    let mut to_riya = steady_stream(
        alex.sender.clone(),
        ledger.clone(),
        "alex",
        "riya",
        Duration::from_millis(20),
        stop.clone(),
    );
    let to_bob = steady_stream(
        riya.sender.clone(),
        ledger.clone(),
        "riya",
        "bob",
        Duration::from_millis(20),
        stop.clone(),
    );
    wait_acked(&mut to_riya.1, 20).await;
    proxy.set_mode(Mode::Blackhole);
    wait_health(&fleet.url(1), ServingStatus::NotServing).await;
    // The partition lasts ten seconds while both keep sending, and the sending stops
    // before it heals: no later message can reveal a gap, so only the catch-up after
    // resubscribing brings what Riya's replica missed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    to_riya.0.await.expect("stream task");
    to_bob.0.await.expect("stream task");
    proxy.set_mode(Mode::Pass);
    wait_health(&fleet.url(1), ServingStatus::Serving).await;
    converge_and_check(&ledger).await;
    alex.close();
    riya.close();
    bob.close();
}

// --- a reconnect herd ---

#[tokio::test]
async fn reconnect_herd_of_500_sessions_lands_on_the_survivor() {
    const USERS: usize = 25;
    const DEVICES: usize = 20;
    let redis = RedisServer::start().await;
    // Heartbeats at a human pace: 500 streams beating every 300 ms would be the load
    // under test instead of the reconnect.
    let mut fleet = Fleet::start_with(2, &redis.url(), &["--heartbeat-interval", "5s"]).await;
    let (alex_client, _) = fleet.register(0, "alex").await;
    let ledger = Ledger::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut people = Vec::new();
    for u in 0..USERS {
        let name = format!("user{u}");
        let (_, creds) = fleet.register(0, &name).await;
        for d in 0..DEVICES {
            // Each session of one token is its own stream; each reader records under
            // its own name so that every session is checked.
            let who = format!("{name}/{d}");
            let person =
                Person::connect(&who, &creds, vec![fleet.url(1), fleet.url(0)], &ledger).await;
            people.push((name.clone(), person));
        }
    }
    for (_, person) in &people {
        person.wait_connected(1).await;
        connected.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(connected.load(Ordering::Relaxed), USERS * DEVICES);
    for u in 0..USERS {
        let ack = alex_client
            .send(Target::User(format!("user{u}")), "before")
            .await
            .expect("send");
        ledger.ack(&ack);
        for (name, person) in &people {
            if *name == format!("user{u}") {
                ledger.expect(&person.name, &ack.conversation_id);
            }
        }
    }
    assert!(
        ledger.wait_until_received(CONVERGE).await,
        "before the kill"
    );

    let mut db = fleet.db.connect_postgres().await;
    fleet.replica(1).sigkill().await;
    // The dead replica's backends leave; from then on only replica 1's pool is there.
    let count = "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let n: i64 = sqlx::query_scalar(count)
            .fetch_one(&mut db)
            .await
            .expect("count backends");
        if n as usize <= POOL_SIZE {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "backends linger");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for u in 0..USERS {
        let ack = alex_client
            .send(Target::User(format!("user{u}")), "after")
            .await
            .expect("send");
        ledger.ack(&ack);
    }
    // Sample the pool while the herd lands and catches up.
    let mut most = 0i64;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let n: i64 = sqlx::query_scalar(count)
            .fetch_one(&mut db)
            .await
            .expect("count backends");
        most = most.max(n);
        if ledger.check().lost.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the herd did not catch up: {:?}",
            ledger.check().lost.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        most as usize <= POOL_SIZE,
        "the survivor's pool stayed within its limit: {most} > {POOL_SIZE}"
    );
    ledger.assert_clean();
    let survivor = fleet.url(0);
    for (_, person) in &people {
        assert!(
            person.states().iter().any(
                |s| matches!(s, ConnectionState::Connected { address } if *address == survivor)
            ),
            "{} reconnected to the survivor",
            person.name
        );
    }
    for (_, person) in people {
        person.close();
    }
}

// --- the gateway when every replica is cut off ---

#[tokio::test]
async fn the_gateway_keeps_routing_when_every_replica_is_cut_off_from_redis() {
    let mut redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &redis.url()).await;
    let (r1, r2) = (fleet.url(0), fleet.url(1));
    let gateway = chat_tests::TestGateway::spawn(&[&r1, &r2], &[]).await;
    gateway.wait_for_healthy(2).await;
    let (_, alex_creds) = fleet.register(0, "alex").await;
    let (_, _riya) = fleet.register(1, "riya").await;

    redis.kill().await;
    wait_health(&r1, ServingStatus::NotServing).await;
    wait_health(&r2, ServingStatus::NotServing).await;
    gateway.wait_for_healthy(0).await;
    // No replica is healthy, but both still store sends: the gateway uses them rather
    // than refusing everyone.
    let alex = chat_sdk::Client::connect(&gateway.url)
        .await
        .expect("connect through the gateway")
        .with_token(&alex_creds.token)
        .expect("token");
    let ack = alex
        .send(Target::User("riya".into()), "while redis is away")
        .await
        .expect("a send through a gateway whose replicas are all cut off");
    assert_eq!(ack.seq, 1);
    gateway.shutdown().await;
}
