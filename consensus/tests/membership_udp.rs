//! The glommio driver over real UDP sockets on loopback: three members on one executor find
//! each other through one join address, and a clean leave is seen as left.

use std::time::{Duration, Instant};

use consensus::membership::peer::KeyService;
use consensus::membership::{
    MemberState, Membership, MembershipConfig, MembershipSettings, MembershipWatch,
};

fn settings(dir: &std::path::Path, name: &str, join: Vec<String>) -> MembershipSettings {
    let (node_id, generation) = consensus::membership::store::start_generation(dir).unwrap();
    MembershipSettings {
        data_dir: dir.to_owned(),
        node_id,
        generation,
        node_name: name.into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise: "127.0.0.1:0".parse().unwrap(),
        rpc_addr: "127.0.0.1:1".parse().unwrap(),
        join,
        peer_tls: None,
        create_key_after: None,
        config: MembershipConfig::default(),
    }
}

async fn wait_for(w: &MembershipWatch, what: &str, cond: impl Fn(&MembershipWatch) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond(w) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            w.members()
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn three_members_join_and_one_leaves() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
    ex.run(async move {
        let first =
            Membership::start(settings(dirs[0].path(), "a", vec![]), KeyService::new()).unwrap();
        let join = vec![first.gossip_addr().to_string()];
        let second = Membership::start(
            settings(dirs[1].path(), "b", join.clone()),
            KeyService::new(),
        )
        .unwrap();
        let third =
            Membership::start(settings(dirs[2].path(), "c", join), KeyService::new()).unwrap();
        let all = [&first, &second, &third];
        for m in all {
            let w = m.watch();
            wait_for(&w, "three up", |w| w.members().count(MemberState::Up) == 3).await;
            let list = w.members();
            assert_eq!(list.members.iter().filter(|m| m.is_self).count(), 1);
            assert!(list.members.iter().all(|m| m.generation == 1));
        }
        third.leave(Duration::from_secs(5)).await;
        for m in [&first, &second] {
            let w = m.watch();
            let id = third.node_id();
            wait_for(&w, "third left", |w| {
                w.members().get(id).map(|m| m.state) == Some(MemberState::Left)
            })
            .await;
        }
        let stats = first.watch();
        assert!(
            stats
                .stats()
                .packets_received
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        first.leave(Duration::from_secs(5)).await;
        second.leave(Duration::from_secs(5)).await;
    });
}
