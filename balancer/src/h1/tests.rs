//! Request head parsing and rewriting.

use super::request::{parse, Framing, HeadError, Peer, Request};

static NO_HEADERS: std::sync::LazyLock<crate::custom_headers::CustomHeaders> =
    std::sync::LazyLock::new(Default::default);

fn peer(text: &'static str) -> Peer<'static> {
    Peer {
        ip: text.parse().expect("address"),
        text,
        real_ip: None,
        set: &NO_HEADERS,
        tls: false,
        client_cert: None,
    }
}

fn ok(head: &str) -> (Request, String, String) {
    let mut out = Vec::new();
    let (r, path) = parse(head.as_bytes(), &peer("10.0.0.7"), None, &mut out, |v| {
        v.path_and_query.to_owned()
    })
    .expect("valid head");
    (r, String::from_utf8(out).expect("utf8"), path)
}

fn err(head: &str) -> HeadError {
    let mut out = Vec::new();
    parse(head.as_bytes(), &peer("10.0.0.7"), None, &mut out, |_| ()).expect_err("invalid head")
}

#[test]
fn headers_are_rewritten_for_the_upstream() {
    let (r, out, _) = ok("GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 6.6.6.6\r\nCookie: a=b\r\n\r\n");
    assert_eq!(
        out,
        "GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nCookie: a=b\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nX-Real-IP: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n"
    );
    assert!(r.keep_alive && r.idempotent && r.has_host && !r.upgrade);
    assert_eq!(r.framing, Framing::None);
}

#[test]
fn a_trusted_proxy_sets_the_client_address() {
    let trusted = crate::realip::RealIp::new(
        vec![crate::netmask::Net::parse("10.0.0.0/8").expect("range")],
        "X-Forwarded-For",
        false,
    );
    let head = "GET / HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: HTTPS\r\n\r\n";
    for (from, client, proto) in [
        ("10.0.0.7", "203.0.113.5", "https"),
        ("192.0.2.1", "192.0.2.1", "http"),
    ] {
        let peer = Peer {
            real_ip: trusted.as_ref(),
            ..peer(from)
        };
        let mut out = Vec::new();
        let (r, seen) = parse(head.as_bytes(), &peer, None, &mut out, |v| v.client).expect("valid");
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(r.client.to_string(), client);
        assert_eq!(seen, r.client);
        assert!(out.contains(&format!("X-Real-IP: {client}\r\n")), "{out}");
        assert!(
            out.contains(&format!("X-Forwarded-For: 203.0.113.5, {from}\r\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("X-Forwarded-Proto: {proto}\r\n")),
            "{out}"
        );
        assert_eq!(out.matches("X-Forwarded-Proto").count(), 1, "{out}");
    }
}

#[test]
fn a_tls_client_is_forwarded_as_https_unless_a_trusted_proxy_says_otherwise() {
    let trusted = crate::realip::RealIp::new(
        vec![crate::netmask::Net::parse("10.0.0.0/8").expect("range")],
        "X-Forwarded-For",
        false,
    );
    let said = "GET / HTTP/1.1\r\nHost: shop\r\nX-Forwarded-Proto: http\r\n\r\n";
    let silent = "GET / HTTP/1.1\r\nHost: shop\r\n\r\n";
    // (peer, head, expected): an untrusted client's header is replaced; a trusted proxy's
    // `http` stands (it terminated TLS itself, or not); without one, the connection decides.
    for (from, head, proto) in [
        ("192.0.2.1", said, "https"),
        ("192.0.2.1", silent, "https"),
        ("10.0.0.7", said, "http"),
        ("10.0.0.7", silent, "https"),
    ] {
        let peer = Peer {
            real_ip: trusted.as_ref(),
            tls: true,
            ..peer(from)
        };
        let mut out = Vec::new();
        parse(head.as_bytes(), &peer, None, &mut out, |_| ()).expect("valid");
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.contains(&format!("X-Forwarded-Proto: {proto}\r\n")),
            "{from} {head:?}: {out}"
        );
        assert_eq!(out.matches("X-Forwarded-Proto").count(), 1, "{out}");
    }
}

#[test]
fn absolute_form_becomes_origin_form_with_its_host() {
    let (r, out, path) = ok("GET http://example.com:8080/x/y?z HTTP/1.1\r\nHost: other\r\n\r\n");
    assert!(
        out.starts_with("GET /x/y?z HTTP/1.1\r\nHost: example.com:8080\r\n"),
        "{out}"
    );
    assert!(!out.contains("other"));
    assert_eq!(path, "/x/y?z");
    assert!(r.has_host);
    let (_, out, _) = ok("GET HTTP://example.com HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("GET / HTTP/1.1\r\n"), "{out}");
}

#[test]
fn keep_alive_follows_the_version_rules() {
    assert!(ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").0.keep_alive);
    assert!(
        !ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .0
            .keep_alive
    );
    assert!(!ok("GET / HTTP/1.0\r\n\r\n").0.keep_alive);
    let (r, out, _) = ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(r.keep_alive && !r.has_host);
    assert!(!out.contains("Host"));
}

#[test]
fn body_framing_is_detected_and_conflicts_rejected() {
    let (r, out, _) = ok("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(r.framing, Framing::Length(12));
    assert!(!r.idempotent);
    assert!(
        !out.contains("Content-Length"),
        "framing is written by the proxy"
    );
    let (r, _, _) = ok("POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(r.framing, Framing::Chunked);
    assert!(r.expect_continue);
    assert_eq!(
        ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
            .0
            .framing,
        Framing::Length(3)
    );
    for bad in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(matches!(err(bad), HeadError::Bad(_)), "{bad}");
    }
}

#[test]
fn malformed_heads_are_bad_requests() {
    for bad in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "\x00\x01\x02\r\n\r\n",
    ] {
        assert!(matches!(err(bad), HeadError::Bad(_)), "{bad:?}");
    }
    assert_eq!(
        err("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        HeadError::NotAllowed
    );
}

#[test]
fn heads_split_anywhere_are_partial_until_complete() {
    let head = "GET /p HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n";
    for cut in 1..head.len() {
        assert_eq!(err(&head[..cut]), HeadError::Partial, "cut at {cut}");
    }
    let (r, _, _) = ok(head);
    assert_eq!(r.head_len, head.len());
}

#[test]
fn pipelined_requests_parse_one_at_a_time() {
    let two = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    let (r, _, p1) = ok(two);
    assert_eq!(p1, "/1");
    let (_, _, p2) = ok(&two[r.head_len..]);
    assert_eq!(p2, "/2");
}

#[test]
fn oversized_heads_and_too_many_headers_get_431() {
    let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    while big.len() <= super::request::MAX_HEAD {
        big.push_str("X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    assert_eq!(err(&big), HeadError::TooLarge, "partial and over the limit");
    big.push_str("\r\n");
    assert_eq!(
        err(&big),
        HeadError::TooLarge,
        "complete and over the limit"
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..super::request::MAX_HEADERS {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(err(&many), HeadError::TooLarge);
}

#[test]
fn an_overlong_request_target_gets_414_not_431() {
    let long = "a".repeat(super::request::MAX_TARGET + 1);
    // Complete, with the whole head under MAX_HEAD.
    let req = format!("GET /{long} HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(err(&req), HeadError::UriTooLong);
    // Still arriving, over MAX_HEAD, without a line end yet.
    let huge = format!("GET /{}", "a".repeat(super::request::MAX_HEAD + 1));
    assert_eq!(err(&huge), HeadError::UriTooLong);
    // At the limit it passes.
    let fits = "a".repeat(super::request::MAX_TARGET - 1);
    let (_, _, path) = ok(&format!("GET /{fits} HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_eq!(path.len(), super::request::MAX_TARGET);
}

#[test]
fn upgrade_requests_keep_their_upgrade_headers() {
    let (r, out, _) =
        ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(r.upgrade);
    assert!(
        out.contains("Upgrade: websocket\r\n") && out.ends_with("Connection: upgrade\r\n"),
        "{out}"
    );
    let (r, out, _) = ok("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert!(
        !r.upgrade && !out.contains("websocket"),
        "Upgrade without Connection: upgrade is dropped"
    );
}

/// Mutated and random inputs never panic any parser (the result does not matter).
#[test]
fn parsers_never_panic_on_garbage() {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds: [&[u8]; 5] = [
        b"GET http://a:1/x?y HTTP/1.1\r\nHost: a\r\nConnection: upgrade, x\r\nUpgrade: ws\r\nX-Forwarded-For: 1.2.3.4\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; q=1\r\nVary: Cookie\r\nETag: \"x\"\r\nCache-Control: a, no-transform\r\nContent-Encoding: identity\r\nContent-Length: 40\r\n\r\n",
        b"5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    ];
    let alphabet = b"\r\n:; \t,0aF/?%\x00\xff";
    let mut out = Vec::new();
    let gzip = crate::gzip::Policy::of(&crate::config::BalancerConfig {
        gzip: true,
        gzip_types: vec!["*".into()],
        ..Default::default()
    })
    .expect("valid")
    .expect("on");
    for _ in 0..20_000 {
        let mut input = seeds[rng.gen_range(0..seeds.len())].to_vec();
        for _ in 0..rng.gen_range(1..6) {
            let at = rng.gen_range(0..=input.len());
            match rng.gen_range(0..4) {
                0 if at < input.len() => input[at] = alphabet[rng.gen_range(0..alphabet.len())],
                1 => input.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
                2 => input.truncate(at),
                _ => input.insert(at, rng.gen()),
            }
        }
        out.clear();
        let _ = parse(&input, &peer("10.0.0.1"), None, &mut out, |v| {
            (
                v.path().len(),
                v.query().map(str::len),
                v.header("host").map(<[u8]>::len),
            )
        });
        out.clear();
        let gzip = Some((&gzip, rng.gen())).filter(|_| rng.gen());
        let _ = super::response::parse(
            &input,
            rng.gen(),
            &mut out,
            None,
            None,
            gzip,
            &Default::default(),
        );
        let mut d = super::chunked::ChunkedDecoder::default();
        let _ = d.feed(&input, |_| {});
    }
}

#[test]
fn a_pools_prefix_is_stripped_from_the_request_line_only_at_a_segment_end() {
    for (line, want) in [
        (
            "GET /api/items?x=1 HTTP/1.1\r\n",
            "GET /items?x=1 HTTP/1.1\r\n",
        ),
        ("GET /api HTTP/1.1\r\n", "GET / HTTP/1.1\r\n"),
        ("GET /api?x HTTP/1.1\r\n", "GET /?x HTTP/1.1\r\n"),
        ("POST /api/ HTTP/1.1\r\n", "POST / HTTP/1.1\r\n"),
        ("GET /apiary HTTP/1.1\r\n", "GET /apiary HTTP/1.1\r\n"),
        ("GET /v1/api/x HTTP/1.1\r\n", "GET /v1/api/x HTTP/1.1\r\n"),
        ("GET /ap HTTP/1.1\r\n", "GET /ap HTTP/1.1\r\n"),
    ] {
        let mut head = line.as_bytes().to_vec();
        head.extend_from_slice(b"X-A: 1\r\n");
        super::request::strip_path_prefix(&mut head, "/api");
        assert_eq!(
            String::from_utf8(head).expect("utf8"),
            format!("{want}X-A: 1\r\n"),
            "{line:?}"
        );
    }
}

#[test]
fn the_upstream_prefix_goes_before_the_path() {
    for (line, want) in [
        ("GET /x?y HTTP/1.1\r\n", "GET /app/x?y HTTP/1.1\r\n"),
        ("GET / HTTP/1.1\r\n", "GET /app/ HTTP/1.1\r\n"),
        ("GET /?q HTTP/1.1\r\n", "GET /app/?q HTTP/1.1\r\n"),
        ("OPTIONS * HTTP/1.1\r\n", "OPTIONS * HTTP/1.1\r\n"),
    ] {
        let mut head = format!("{line}X-A: 1\r\n").into_bytes();
        super::request::add_path_prefix(&mut head, "/app");
        assert_eq!(
            String::from_utf8(head).expect("utf8"),
            format!("{want}X-A: 1\r\n"),
            "{line:?}"
        );
    }
}
