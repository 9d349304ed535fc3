//! `[[balancer.static]]`: files answered from disk with validators, conditional requests and
//! ranges, directories, methods, traversal attempts, and `try_upstream`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{client, config, no_follow, raw_exchange, start, Upstream};
use ferrocat_balancer::{BalancerConfig, StaticConfig};

/// A file of `n` bytes that differ from their neighbours (a wrong offset shows).
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// `dir/www/static/{app.css,index.html,big.bin,sub/}` and `dir/secret.txt` outside the root.
fn site(dir: &Path) -> Vec<u8> {
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("static/sub")).unwrap();
    std::fs::create_dir_all(www.join("files")).unwrap();
    std::fs::write(www.join("static/app.css"), "body { color: teal }\n").unwrap();
    std::fs::write(www.join("static/index.html"), "<h1>index</h1>\n").unwrap();
    let big = pattern(3 * 1024 * 1024 + 17);
    std::fs::write(www.join("static/big.bin"), &big).unwrap();
    std::fs::write(www.join("files/report.txt"), "report\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "TOP SECRET\n").unwrap();
    big
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_come_from_disk_with_validators_conditionals_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let big = site(dir.path());
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let mut st = StaticConfig::root("/static/", dir.path().join("www"));
    st.expires = Some(Duration::from_secs(3600));
    st.charset = Some("utf-8".into());
    cfg.statics = vec![st];
    cfg.add_header = vec!["X-Frame-Options: DENY".into()];
    let (h, base) = start(cfg).await;
    let http = no_follow();

    // A small file: type, length, validators, caching, add_header.
    let r = http
        .get(format!("{base}/static/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/css; charset=utf-8");
    assert_eq!(header(&r, "content-length"), "21");
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert_eq!(header(&r, "cache-control"), "max-age=3600");
    assert!(!header(&r, "expires").is_empty());
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    let etag = header(&r, "etag");
    let modified = header(&r, "last-modified");
    assert!(etag.starts_with('"') && etag.ends_with("-15\""), "{etag}");
    assert!(modified.ends_with(" GMT"), "{modified}");
    assert_eq!(r.text().await.unwrap(), "body { color: teal }\n");

    // Conditionals: the validators the answer gave bring 304 (no body), others the file.
    let get = |h: &[(&str, &str)]| {
        let mut b = http.get(format!("{base}/static/app.css"));
        for (k, v) in h {
            b = b.header(*k, *v);
        }
        b.send()
    };
    let r = get(&[("if-none-match", &etag)]).await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), etag);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let weak = format!("\"x\", W/{etag}");
    assert_eq!(
        get(&[("if-none-match", &weak)]).await.unwrap().status(),
        304
    );
    assert_eq!(
        get(&[("if-none-match", "\"other\"")])
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get(&[("if-modified-since", &modified)])
            .await
            .unwrap()
            .status(),
        304
    );
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(
        get(&[("if-modified-since", old)]).await.unwrap().status(),
        200
    );
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        get(&[
            ("if-none-match", "\"other\""),
            ("if-modified-since", &modified)
        ])
        .await
        .unwrap()
        .status(),
        200
    );
    assert_eq!(
        get(&[("if-match", "\"other\"")]).await.unwrap().status(),
        412
    );
    assert_eq!(get(&[("if-match", &etag)]).await.unwrap().status(), 200);
    assert_eq!(
        get(&[("if-unmodified-since", old)]).await.unwrap().status(),
        412
    );
    let r = get(&[("range", "bytes=0-3")]).await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 0-3/21");
    assert_eq!(r.text().await.unwrap(), "body");

    // HEAD: the head alone.
    let r = http
        .head(format!("{base}/static/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "21");

    // A large file: streamed whole, and in ranges.
    let url = format!("{base}/static/big.bin");
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    let big_tag = header(&r, "etag");
    assert!(
        r.bytes().await.unwrap() == big,
        "the whole file, byte for byte"
    );
    let range = |v: &'static str| http.get(&url).header("range", v).send();
    let r = range("bytes=1000000-1999999").await.unwrap();
    assert_eq!(r.status(), 206);
    let len = big.len();
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes 1000000-1999999/{len}")
    );
    assert!(r.bytes().await.unwrap() == big[1_000_000..2_000_000]);
    let r = range("bytes=-10").await.unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == big[len - 10..]);
    let r = range("bytes=99999999-").await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), format!("bytes */{len}"));
    // Several ranges: the whole file (a valid answer) rather than a multipart one.
    let r = range("bytes=0-1,5-6").await.unwrap();
    assert_eq!(r.status(), 200);
    // If-Range: the range only while the file is the one the client has.
    let r = http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", &big_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let r = http
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"changed\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), len);

    // Directories: the index file, a redirect to the slash, 403 without an index.
    let r = http.get(format!("{base}/static/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "<h1>index</h1>\n");
    let r = http
        .get(format!("{base}/static/sub?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(header(&r, "location"), "/static/sub/?x=1");
    let r = http
        .get(format!("{base}/static/sub/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Missing: 404 from the balancer; other methods: 405 with Allow.
    let r = http
        .get(format!("{base}/static/none.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{base}/static/app.css"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
    assert_eq!(up.hits(), 0, "no static request reached the upstream");

    // Outside the location: proxied as before.
    let r = http.get(format!("{base}/api/x")).send().await.unwrap();
    assert_eq!(header(&r, "x-upstream"), "app");
    assert_eq!(up.hits(), 1);

    // Keep-alive: two answers on one connection (a 304 and a 200).
    let raw = raw_exchange(
        &base,
        format!(
            "GET /static/app.css HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n\
             GET /static/app.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{raw}");
    assert!(
        raw.contains("HTTP/1.1 200 OK\r\n") && raw.ends_with("body { color: teal }\n"),
        "{raw}"
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reads_a_file_outside_its_location() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let www = dir.path().join("www");
    let mut alias = StaticConfig::root("/files", www.join("files"));
    (alias.root, alias.alias) = (None, alias.root.take());
    cfg.statics = vec![StaticConfig::root("/static/", &www), alias];
    let (h, base) = start(cfg).await;
    let r = client()
        .get(format!("{base}/files/report.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "report\n",
        "alias maps the rest of the path"
    );
    for path in [
        "/static/../../secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/files/../../secret.txt",
        // nginx's alias "off by slash": a location without its slash must not take this.
        "/files../secret.txt",
        "/files..%2fsecret.txt",
        "/static/../../../../../../etc/passwd",
    ] {
        let raw = raw_exchange(
            &base,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 "), "{path}: {raw}");
        assert!(
            !raw.contains("TOP SECRET"),
            "{path} read a file outside the root"
        );
        assert!(!raw.contains("root:"), "{path} read /etc/passwd");
        let status = &raw[9..12];
        // `..` above the root: 400; a path that resolves outside the locations: the upstream.
        assert!(
            status == "400" || raw.contains("x-upstream: app"),
            "{path}: {raw}"
        );
    }
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_upstream_sends_what_is_not_on_disk_to_the_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("robots.txt"), "User-agent: *\n").unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let mut st = StaticConfig::root("/", dir.path());
    st.try_upstream = true;
    cfg.statics = vec![st];
    let (h, base) = start(cfg).await;
    let http = client();
    let r = http.get(format!("{base}/robots.txt")).send().await.unwrap();
    assert_eq!(header(&r, "content-type"), "text/plain");
    assert_eq!(r.text().await.unwrap(), "User-agent: *\n");
    assert_eq!(up.hits(), 0);
    let r = http.get(format!("{base}/api/me")).send().await.unwrap();
    assert_eq!(header(&r, "x-upstream"), "app");
    // `/`: a directory without an index file is the app's home page, not a 403.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(header(&r, "x-upstream"), "app");
    let r = http
        .post(format!("{base}/login"))
        .body("user=a")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-upstream"), "app");
    assert_eq!(up.hits(), 3);
    assert_eq!(up.posts.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A POST to a file that exists is still not sent on.
    let r = http
        .post(format!("{base}/robots.txt"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(up.hits(), 3);
    h.stop(true).await;
}

#[test]
fn static_locations_are_read_from_toml_and_bad_ones_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let parse = |extra: &str| -> BalancerConfig {
        toml::from_str(&format!(
            "[[upstream]]\naddress = \"127.0.0.1:1\"\n[[static]]\n{extra}\n"
        ))
        .unwrap()
    };
    let ok = parse(&format!(
        "location = \"/assets/\"\nalias = \"{d}\"\nindex = [\"index.htm\"]\nexpires = \"7d\"\ntry_upstream = true\ncache_valid = \"0s\"\ngzip_static = true"
    ));
    assert!(ok.validate().is_ok());
    let st = &ok.statics[0];
    assert_eq!(st.expires, Some(Duration::from_secs(7 * 86400)));
    assert!(st.try_upstream && st.gzip_static && st.root.is_none() && st.cache_valid.is_zero());
    for (extra, key) in [
        (format!("location = \"assets\"\nroot = \"{d}\""), "location"),
        (
            format!("location = \"/a/../b\"\nroot = \"{d}\""),
            "location",
        ),
        ("location = \"/a\"".to_owned(), "root"),
        (
            format!("location = \"/a\"\nroot = \"{d}\"\nalias = \"{d}\""),
            "alias",
        ),
        (format!("location = \"/a\"\nroot = \"{d}/missing\""), "root"),
        (
            format!("location = \"/a\"\nroot = \"{d}\"\nindex = [\"../x\"]"),
            "index",
        ),
        (
            format!("location = \"/a\"\nroot = \"{d}\"\ncharset = \"utf-8\\r\\nX: y\""),
            "charset",
        ),
        (
            format!("location = \"/a\"\nroot = \"{d}\"\nfallback = \"../index.html\""),
            "fallback",
        ),
        (
            format!(
                "location = \"/a\"\nroot = \"{d}\"\nfallback = \"index.html\"\ntry_upstream = true"
            ),
            "fallback",
        ),
    ] {
        let err = parse(&extra).validate().unwrap_err();
        assert_eq!(err.key, format!("balancer.static[0].{key}"), "{extra}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_disk_shows_once_cache_valid_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (cached, direct) = (dir.path().join("cached"), dir.path().join("direct"));
    std::fs::create_dir_all(&cached).unwrap();
    std::fs::create_dir_all(&direct).unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let mut a = StaticConfig::root("/cached/", dir.path());
    a.cache_valid = Duration::from_millis(300);
    let mut b = StaticConfig::root("/direct/", dir.path());
    b.cache_valid = Duration::ZERO;
    cfg.statics = vec![a, b];
    let (h, base) = start(cfg).await;
    let http = client();
    let body = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Without the cache every request sees the disk as it is.
    assert_eq!(body("/direct/a.txt").await.0, 404);
    std::fs::write(direct.join("a.txt"), "one").unwrap();
    assert_eq!(body("/direct/a.txt").await, (200, "one".into()));
    std::fs::write(direct.join("a.txt"), "two!").unwrap();
    assert_eq!(body("/direct/a.txt").await, (200, "two!".into()));
    // With it, a miss and a file are looked at again once their time has passed.
    assert_eq!(body("/cached/a.txt").await.0, 404);
    std::fs::write(cached.join("a.txt"), "one").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(body("/cached/a.txt").await, (200, "one".into()));
    std::fs::write(cached.join("a.txt"), "two!").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, text) = body("/cached/a.txt").await;
    assert_eq!((status, text.as_str()), (200, "two!"));
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_static_sends_the_precompressed_file_to_clients_that_take_gzip() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let css = "body { color: teal }\n".repeat(50);
    std::fs::write(dir.path().join("app.css"), &css).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(css.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    std::fs::write(dir.path().join("app.css.gz"), &gz).unwrap();
    std::fs::write(dir.path().join("plain.txt"), "no gz beside me\n").unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let mut st = StaticConfig::root("/s/", dir.path());
    st.alias = st.root.take();
    st.gzip_static = true;
    cfg.statics = vec![st];
    let (h, base) = start(cfg).await;
    let ask = |path: &'static str, accept: &'static str| {
        let base = base.clone();
        async move { raw_get(&base, path, &format!("Accept-Encoding: {accept}\r\n")).await }
    };
    let (head, body) = ask("/s/app.css", "gzip, deflate, br").await;
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("content-type: text/css"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert!(body == gz, "the .gz file as it is on disk");
    let (head, body) = ask("/s/app.css", "gzip;q=0, identity").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert_eq!(body, css.as_bytes());
    let (head, body) = ask("/s/plain.txt", "gzip").await;
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, b"no gz beside me\n");
    assert_eq!(up.hits(), 0);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_answers_are_in_the_access_log_with_their_status_and_body_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let big = site(dir.path());
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let log = dir.path().join("access.log");
    cfg.access_log = Some(log.clone());
    cfg.statics = vec![StaticConfig::root("/static/", dir.path().join("www"))];
    let (h, base) = start(cfg).await;
    let http = client();
    for path in ["/static/app.css", "/static/big.bin", "/static/none"] {
        http.get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let lines = common::log_lines_at_least(&log, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].contains("\"GET /static/app.css HTTP/1.1\" 200 21 "),
        "{}",
        lines[0]
    );
    let big_line = format!("\"GET /static/big.bin HTTP/1.1\" 200 {} ", big.len());
    assert!(lines[1].contains(&big_line), "{}", lines[1]);
    assert!(
        lines[2].contains("\"GET /static/none HTTP/1.1\" 404 "),
        "{}",
        lines[2]
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_with_bounded_memory() {
    use futures::StreamExt as _;
    const SIZE: u64 = 300 << 20;
    let dir = tempfile::tempdir().unwrap();
    // Sparse: 300 MiB of zeros that cost no disk.
    std::fs::File::create(dir.path().join("disk.img"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    cfg.statics = vec![StaticConfig::root("/", dir.path())];
    let (h, base) = start(cfg).await;
    let before = common::rss_kib();
    let r = client()
        .get(format!("{base}/disk.img"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), SIZE.to_string());
    let mut got = 0u64;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == 0));
        got += chunk.len() as u64;
    }
    assert_eq!(got, SIZE);
    let growth_mib = common::rss_kib().saturating_sub(before) / 1024;
    assert!(
        growth_mib < 40,
        "RSS grew by {growth_mib} MiB while a {} MiB file went out",
        SIZE >> 20
    );
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_page_app_gets_its_page_for_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("assets")).unwrap();
    std::fs::write(app.join("index.html"), "<div id=app></div>\n").unwrap();
    std::fs::write(app.join("assets/app.js"), "start()\n").unwrap();
    let up = Upstream::start("api").await;
    let mut cfg = config(&[&up]);
    let mut st = StaticConfig::root("/app/", dir.path());
    st.fallback = Some("index.html".into());
    cfg.statics = vec![st];
    let (h, base) = start(cfg).await;
    let http = client();
    for (path, status, ctype, body) in [
        ("/app/", 200, "text/html", "<div id=app></div>\n"),
        ("/app/orders/42", 200, "text/html", "<div id=app></div>\n"),
        (
            "/app/assets/app.js",
            200,
            "application/javascript",
            "start()\n",
        ),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(header(&r, "content-type"), ctype, "{path}");
        assert_eq!(r.text().await.unwrap(), body, "{path}");
    }
    // Outside the location: the upstreams, as before.
    let r = http.get(format!("{base}/api/orders")).send().await.unwrap();
    assert_eq!(header(&r, "x-upstream"), "api");
    assert_eq!(up.hits(), 1);
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_locations_and_empties_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one").unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    let mut st = StaticConfig::root("/s/", dir.path());
    st.alias = st.root.take();
    st.cache_valid = Duration::from_secs(3600);
    cfg.statics = vec![st];
    let (h, base) = start(cfg.clone()).await;
    let http = client();
    let text = |r: reqwest::Response| async move { r.text().await.unwrap() };
    let url = format!("{base}/s/a.txt");
    assert_eq!(text(http.get(&url).send().await.unwrap()).await, "one");
    std::fs::write(dir.path().join("a.txt"), "two!").unwrap();
    // Within `cache_valid` (an hour here) the worker answers from its cache...
    assert_eq!(text(http.get(&url).send().await.unwrap()).await, "one");
    // ...until a reload, which empties it.
    cfg.statics[0].expires = Some(Duration::from_secs(60));
    h.reload(cfg.clone()).unwrap();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(header(&r, "cache-control"), "max-age=60");
    assert_eq!(text(r).await, "two!");
    // A reload without the location sends its paths to the upstreams.
    cfg.statics.clear();
    h.reload(cfg).unwrap();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(header(&r, "x-upstream"), "app");
    h.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_regular_file_is_refused_without_waiting_on_it() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO: opening it for reading would wait until some writer came.
    let fifo = dir.path().join("pipe.txt");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(dir.path().join("ok.txt"), "ok").unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    cfg.statics = vec![StaticConfig::root("/", dir.path())];
    let (h, base) = start(cfg).await;
    let http = client();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        http.get(format!("{base}/pipe.txt")).send(),
    )
    .await
    .expect("answered, not stuck opening the FIFO")
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = http.get(format!("{base}/ok.txt")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(up.hits(), 0);
    h.stop(true).await;
}

/// GETs `path` raw with extra header lines: the lowercased head and the body.
async fn raw_get(base: &str, path: &str, extra: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(out[..at].to_vec())
        .unwrap()
        .to_ascii_lowercase();
    (head, out[at + 4..].to_vec())
}

fn head_value(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_gzip_on_small_files_of_listed_types_are_compressed() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let css = ".rule { margin: 0 auto; color: #123456 }\n".repeat(100);
    std::fs::write(dir.path().join("site.css"), &css).unwrap();
    std::fs::write(dir.path().join("logo.png"), vec![7u8; 4000]).unwrap();
    std::fs::write(dir.path().join("big.css"), ".r{}\n".repeat(20_000)).unwrap();
    let up = Upstream::start("app").await;
    let mut cfg = config(&[&up]);
    cfg.gzip = true;
    cfg.gzip_types.push("text/css".into());
    cfg.statics = vec![StaticConfig::root("/", dir.path())];
    let (h, base) = start(cfg).await;
    let gz = "Accept-Encoding: gzip\r\n";

    let (head, body) = raw_get(&base, "/site.css", gz).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(head_value(&head, "content-encoding"), "gzip", "{head}");
    assert_eq!(head_value(&head, "vary"), "accept-encoding");
    assert_eq!(head_value(&head, "content-length"), body.len().to_string());
    let etag = head_value(&head, "etag");
    assert!(etag.starts_with("w/\""), "a weak validator: {etag}");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, css);
    assert!(body.len() < css.len() / 5, "{} bytes", body.len());

    // The same validator answers 304 (weak comparison, as If-None-Match uses).
    let (head, _) = raw_get(
        &base,
        "/site.css",
        &format!("{gz}If-None-Match: W/{}\r\n", &etag[2..]),
    )
    .await;
    assert!(head.starts_with("http/1.1 304"), "{head}");
    // A client without gzip, or asking for a range, gets the file's own bytes.
    let (head, body) = raw_get(&base, "/site.css", "").await;
    assert!(head_value(&head, "content-encoding").is_empty(), "{head}");
    assert_eq!(head_value(&head, "vary"), "accept-encoding");
    assert!(!head_value(&head, "etag").starts_with("w/"));
    assert_eq!(body, css.as_bytes());
    let (head, body) = raw_get(&base, "/site.css", &format!("{gz}Range: bytes=0-9\r\n")).await;
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, &css.as_bytes()[..10]);
    // Types not listed, and files over 64 KiB (streamed from disk), go as they are.
    let (head, body) = raw_get(&base, "/logo.png", gz).await;
    assert!(head_value(&head, "content-encoding").is_empty(), "{head}");
    assert!(head_value(&head, "vary").is_empty(), "{head}");
    assert_eq!(body.len(), 4000);
    let (head, body) = raw_get(&base, "/big.css", gz).await;
    assert!(head_value(&head, "content-encoding").is_empty(), "{head}");
    assert_eq!(body.len(), 100_000);
    assert_eq!(up.hits(), 0);
    h.stop(true).await;
}
