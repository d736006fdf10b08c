//! End-to-end: the device list at scale — pages (`limit`, `after`, the `Link` to the next
//! one), filters (`online`, `q`), the counts in headers, and bad parameters answered 400.

mod common;

use common::device::FakeDevice;
use common::{answer, wait_for, TestServer};
use serde_json::Value;

/// The ids of a list answer, its counts and its next-page link.
struct Page {
    ids: Vec<String>,
    total: usize,
    online: usize,
    next: Option<String>,
}

fn page(server: &TestServer, path: &str) -> Page {
    let response = server
        .request("GET", path)
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let count = |name: &str| -> usize {
        response
            .header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: no number in {name}"))
    };
    let (total, online) = (count("X-Total-Count"), count("X-Online-Count"));
    // `Link: </api/devices?...>; rel="next"`
    let next = response.header("Link").map(|link| {
        assert!(link.ends_with("; rel=\"next\""), "{link}");
        link.trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    let body: Value = response.into_json().expect("a JSON list");
    let ids = body
        .as_array()
        .expect("an array")
        .iter()
        .map(|d| d["id"].as_str().expect("an id").to_string())
        .collect();
    Page {
        ids,
        total,
        online,
        next,
    }
}

#[test]
fn the_list_pages_filters_and_counts() {
    let server = TestServer::start();
    let mut devices: Vec<FakeDevice> = (5001..=5005)
        .map(|n| FakeDevice::framed(server.framed, n))
        .collect();
    for n in 5001..=5005 {
        wait_for(&format!("device {n} online"), || {
            server.online(&n.to_string()).then_some(())
        });
    }
    devices.remove(2).close();
    wait_for("device 5003 offline", || {
        (!server.online("5003")).then_some(())
    });

    // No parameters: every device, as before paging existed.
    let all = page(&server, "/api/devices");
    assert_eq!(all.ids, ["5001", "5002", "5003", "5004", "5005"]);
    assert_eq!((all.total, all.online, all.next), (5, 4, None));

    // Pages of two, each pointing at the next; together exactly the whole list.
    let mut path = "/api/devices?limit=2".to_string();
    let mut pages = Vec::new();
    loop {
        let p = page(&server, &path);
        assert_eq!((p.total, p.online), (5, 4), "counts cover every page");
        pages.push(p.ids);
        match p.next {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(
        pages,
        [vec!["5001", "5002"], vec!["5003", "5004"], vec!["5005"]]
    );

    // Filters narrow the list and the counts, and travel with the next link.
    let offline = page(&server, "/api/devices?online=false");
    assert_eq!(
        (offline.ids, offline.total, offline.online),
        (vec!["5003".to_string()], 1, 0)
    );
    let online = page(&server, "/api/devices?online=true&limit=3");
    assert_eq!(online.ids, ["5001", "5002", "5004"]);
    let next = online.next.expect("a fourth online device");
    assert!(next.contains("online=true"), "{next}");
    assert_eq!(page(&server, &next).ids, ["5005"]);
    assert_eq!(page(&server, "/api/devices?q=5004").ids, ["5004"]);
    assert_eq!(
        page(&server, "/api/devices?q=127.0.0.1").total,
        5,
        "remote address"
    );
    assert_eq!(page(&server, "/api/devices?q=nothing-like-it").total, 0);
    assert_eq!(page(&server, "/api/devices?after=5004").ids, ["5005"]);

    // A limit past any integer is capped like any over-large limit, not refused.
    let huge = page(&server, "/api/devices?limit=99999999999999999999999999");
    assert_eq!(huge.ids.len(), 5);

    // The counts follow devices that are replaced, come back, and leave.
    let replacement = FakeDevice::framed(server.framed, 5001);
    devices[0].wait_closed("the replaced connection to be closed");
    wait_for("5001 held by its new connection", || {
        server.online("5001").then_some(())
    });
    let again = FakeDevice::framed(server.framed, 5003);
    wait_for("5003 back online", || server.online("5003").then_some(()));
    let counted = |path: &str| {
        let p = page(&server, path);
        (p.total, p.online)
    };
    assert_eq!(counted("/api/devices?limit=1"), (5, 5));
    assert_eq!(counted("/api/devices?limit=1&online=false"), (0, 0));
    devices.remove(1).close();
    wait_for("5002 offline", || (!server.online("5002")).then_some(()));
    assert_eq!(counted("/api/devices?limit=1"), (5, 4));
    assert_eq!(counted("/api/devices?limit=1&online=true"), (4, 4));
    assert_eq!(counted("/api/devices?limit=1&online=false"), (1, 0));
    assert_eq!(page(&server, "/api/devices?online=false").ids, ["5002"]);
    drop((replacement, again));

    // Bad parameters: 400 with a message naming the parameter.
    for (query, word) in [
        ("online=maybe", "online"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("limit=-3", "limit"),
    ] {
        let (status, body) = answer(
            server
                .request("GET", &format!("/api/devices?{query}"))
                .call(),
        );
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(word), "{query}: {body}");
    }
    let long = "x".repeat(300);
    let (status, _) = answer(
        server
            .request("GET", &format!("/api/devices?q={long}"))
            .call(),
    );
    assert_eq!(status, 400);
}
