//! HTTP Basic authentication (`[[balancer.auth_basic]]`, nginx `auth_basic`): a guarded
//! location answers 401 with a challenge, and reaches the upstream only with a user and
//! password from its htpasswd file (Apache MD5 and bcrypt entries here); an `off` location
//! inside it and other paths stay open; an escaped path does not slip past; the access log
//! names the user; a reload re-reads the file; bad entries are config errors naming the key.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use ferrocat_balancer::{AuthBasicConfig, BalancerConfig};

use common::{client, config, log_lines_at_least, start, Upstream};

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn guarded(up: &Upstream, users: &std::path::Path) -> BalancerConfig {
    let mut cfg = config(&[up]);
    cfg.auth_basic = vec![
        AuthBasicConfig {
            location: "/manager".into(),
            realm: "Tomcat manager".into(),
            user_file: Some(users.to_owned()),
            off: false,
            access: Vec::new(),
            satisfy: Default::default(),
        },
        AuthBasicConfig {
            location: "/manager/status".into(),
            realm: String::new(),
            user_file: None,
            off: true,
            access: Vec::new(),
            satisfy: Default::default(),
        },
    ];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_location_needs_a_user_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    let bcrypt = pwhash::bcrypt::hash("s3cret ann").unwrap();
    std::fs::write(
        &users,
        format!(
            "# Tomcat admins\ntom:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n\nann:{bcrypt}:comment\n"
        ),
    )
    .unwrap();
    let a = Upstream::start("a").await;
    let mut cfg = guarded(&a, &users);
    let log = dir.path().join("access.log");
    cfg.access_log = Some(log.clone());
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let get = |path: &str, auth: Option<String>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { r.send().await.unwrap() }
    };

    let refused = get("/manager/html", None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Basic realm=\"Tomcat manager\", charset=\"UTF-8\""
    );
    for bad in [
        Some(basic("tom", "wrong")),
        Some(basic("nobody", "password")),
        Some("Basic !!".into()),
        Some("Bearer x".into()),
    ] {
        assert_eq!(get("/manager/html", bad).await.status(), 401);
    }
    // An escaped path is normalized before it is matched.
    assert_eq!(get("/%6danager/html", None).await.status(), 401);
    assert_eq!(get("/x/../manager/html", None).await.status(), 401);
    assert_eq!(a.hits(), 0, "nothing refused reached the upstream");

    for (user, password) in [("tom", "password"), ("ann", "s3cret ann")] {
        for _ in 0..2 {
            let ok = get("/manager/html", Some(basic(user, password))).await;
            assert_eq!(ok.status(), 200, "{user}");
        }
    }
    assert_eq!(a.hits(), 4);
    // Open: the `off` location inside, a path that only starts with the same letters, others.
    for path in ["/manager/status", "/manager/status/all", "/managerial", "/"] {
        assert_eq!(get(path, None).await.status(), 200, "{path}");
    }
    let lines = log_lines_at_least(&log, 15).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" - tom [") && l.contains("/manager/html")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains(" - ann [")), "{lines:?}");

    // A reload re-reads the file: tom is gone, bob is in.
    std::fs::write(&users, "bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n").unwrap();
    h.reload(cfg.clone()).unwrap();
    assert_eq!(
        get("/manager/html", Some(basic("tom", "password")))
            .await
            .status(),
        401
    );
    assert_eq!(
        get("/manager/html", Some(basic("bob", "secret")))
            .await
            .status(),
        200
    );

    // Bad entries are refused, naming the key; the running config stays.
    std::fs::write(
        &users,
        "bob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\neve:plaintext\n",
    )
    .unwrap();
    let e = h.reload(cfg.clone()).unwrap_err();
    assert_eq!(e.key, "balancer.auth_basic[0].user_file");
    assert!(e.reason.contains("line 2"), "{}", e.reason);
    let mut missing = cfg.clone();
    missing.auth_basic[0].user_file = None;
    assert_eq!(
        h.reload(missing).unwrap_err().key,
        "balancer.auth_basic[0].user_file"
    );
    let mut quote = cfg.clone();
    quote.auth_basic[0].realm = "a\"b".into();
    assert_eq!(
        h.reload(quote).unwrap_err().key,
        "balancer.auth_basic[0].realm"
    );
    assert_eq!(
        get("/manager/html", Some(basic("bob", "secret")))
            .await
            .status(),
        200
    );
    h.stop(true).await;
}

#[test]
fn auth_basic_is_read_from_toml() {
    let cfg: BalancerConfig = toml::from_str(
        r#"
[[upstream]]
address = "127.0.0.1:9"
[[auth_basic]]
location = "/manager"
user_file = "/etc/ferrocat/htpasswd"
[[auth_basic]]
location = "/manager/status"
off = true
"#,
    )
    .unwrap();
    assert_eq!(cfg.auth_basic.len(), 2);
    assert_eq!(cfg.auth_basic[0].realm, "Restricted");
    assert!(cfg.auth_basic[1].off);
    let e = cfg.check_files().unwrap_err();
    assert_eq!(e.key, "balancer.auth_basic[0].user_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_rules_go_with_or_instead_of_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    std::fs::write(&users, "tom:{PLAIN}cat\n").unwrap();
    let a = Upstream::start("a").await;
    let mut cfg = guarded(&a, &users);
    cfg.auth_basic.truncate(1);
    let status = |cfg: BalancerConfig, auth: Option<String>| async move {
        let (h, base) = start(cfg).await;
        let mut r = client().get(format!("{base}/manager/html"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let s = r.send().await.unwrap().status().as_u16();
        h.stop(true).await;
        s
    };
    let tom = || Some(basic("tom", "cat"));
    // satisfy all: a denied address gets 403 even with a good password.
    let mut all = cfg.clone();
    all.auth_basic[0].access = vec!["allow 10.0.0.0/8".into(), "deny all".into()];
    assert_eq!(status(all.clone(), tom()).await, 403);
    all.auth_basic[0].access = vec!["allow 127.0.0.0/8".into(), "deny all".into()];
    assert_eq!(status(all.clone(), None).await, 401);
    assert_eq!(status(all, tom()).await, 200);
    // satisfy any: an allowed address needs no password; another one does.
    let mut any = cfg.clone();
    any.auth_basic[0].satisfy = ferrocat_balancer::Satisfy::Any;
    any.auth_basic[0].access = vec!["allow 127.0.0.1".into(), "deny all".into()];
    assert_eq!(status(any.clone(), None).await, 200);
    any.auth_basic[0].access = vec!["allow 10.0.0.0/8".into(), "deny all".into()];
    assert_eq!(status(any.clone(), None).await, 401);
    assert_eq!(status(any, tom()).await, 200);
    // Rules alone, no user file: by address only.
    let mut only = cfg.clone();
    only.auth_basic[0].user_file = None;
    only.auth_basic[0].access = vec!["deny 127.0.0.1".into()];
    assert_eq!(status(only.clone(), tom()).await, 403);
    only.auth_basic[0].access = vec!["allow 127.0.0.1".into(), "deny all".into()];
    assert_eq!(status(only.clone(), None).await, 200);
    only.auth_basic[0].access = vec!["allow 127.0.0.1".into(), "deny everyone".into()];
    assert_eq!(
        only.check_files().unwrap_err().key,
        "balancer.auth_basic[0].access[1]"
    );
    assert_eq!(a.hits(), 4, "only the requests let in reached the upstream");
}
