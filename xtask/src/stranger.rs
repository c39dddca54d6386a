//! The stranger's machine: the release tarball of `cargo xtask dist`, tried in a guest that
//! holds nothing of the build tree. The initramfs has busybox, ublk_drv, fio (the user's own
//! tool, with its shared libraries kept out of the system library paths), the tarball and its
//! SHA256SUMS, and nothing else. The guest installs the tarball as the README says, runs the
//! tools and sends what happened (exit codes, outputs, files) over a second serial port; the
//! host judges each check from those facts, so the judging is plain Rust with host tests.
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::guest::{GuestOpts, base_tree, write_initramfs};
use crate::initramfs::{Tree, shared_libs};
use crate::util::{cache_dir, which};

/// The checks, in the order the guest runs them; each counts as one test.
pub const CHECKS: &[&str] = &[
    "tarball_verifies_and_installs",
    "binaries_run_without_shared_libraries",
    "doctor_exits_0",
    "ramdisk_serves_fio_crc32c_verify",
    "diagnose_finds_injected_hang",
    "watch_dump_screen_shows_tag_grid",
    "man_pages_where_the_tarball_says",
    "completions_where_the_tarball_says",
];

/// The tag of queue 0 that `--inject hang` never commits; fio keeps every tag of the depth-4
/// queue busy, so this one gets a request.
const HANG_TAG: u64 = 2;
/// Bytes fio writes and reads back with crc32c on the ramdisk.
const VERIFY_BYTES: u64 = 32 << 20;
const BINS: [&str; 2] = ["ublk-trace", "ublk-server"];
/// The dirs the tarball's README names for man pages and completions, relative to the
/// tarball's top dir (installed under /usr/local).
const MAN_DIR: &str = "share/man/man1/";
const BASH_DIR: &str = "share/bash-completion/completions/";
const ZSH_DIR: &str = "share/zsh/site-functions/";
const FISH_DIR: &str = "share/fish/vendor_completions.d/";

/// One check's verdict: `Err` holds why it failed.
pub struct Verdict {
    pub name: &'static str,
    pub result: Result<(), String>,
}

/// What the release must say about itself.
pub struct Expect {
    pub version: String,
    pub commit: String,
}

/// Build the release, boot it in a guest of its own and judge every check.
pub fn run(opts: &GuestOpts) -> Result<Vec<Verdict>> {
    let started = Instant::now();
    crate::dist::run(false)
        .context("cargo xtask dist (the stranger's machine needs its tarball)")?;
    let dist_s = started.elapsed().as_secs_f64();
    let version = env!("CARGO_PKG_VERSION").to_string();
    let dist_dir = crate::util::target_dir().join("dist");
    let tarball = crate::dist::tarball_name(&version);
    let kernel = crate::kernel::fetch(&opts.kernel)?;
    let (mut tree, order) = base_tree(&kernel, opts, &["ublk_drv"])?;
    add_fio(&mut tree)?;
    for name in [tarball.as_str(), "SHA256SUMS"] {
        tree.copy_host(&dist_dir.join(name), &format!("/root/{name}"))?;
    }
    let initrd = write_initramfs(tree, &kernel, &order, &guest_script(&tarball))?;
    let image_bytes = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    let tag = format!(
        "{}-{}",
        opts.kernel.name.replace([':', '/'], "_"),
        std::process::id()
    );
    let data = cache_dir().join(format!("stranger-{tag}.data"));
    let log = cache_dir().join(format!("stranger-{tag}.log"));
    let _ = std::fs::remove_file(&data);
    println!(
        "[stranger] {tarball} on {} (image {:.1} MiB: busybox, ublk_drv, fio + its libraries, the tarball)",
        kernel.kver,
        image_bytes as f64 / (1 << 20) as f64
    );
    let boot_started = Instant::now();
    let mut boot = crate::guest::boot_opts(opts, &kernel, &initrd);
    boot.data_out = Some(data.clone());
    let (outcome, lines) = crate::qemu::boot_captured(&boot, &log, |l| println!("{l}"))?;
    let _ = std::fs::remove_file(&initrd);
    crate::guest::report_outcome(&outcome, &lines, &log);
    let raw = std::fs::read(&data).unwrap_or_default();
    let (facts, complete) = parse_facts(&String::from_utf8_lossy(&raw));
    let expect = Expect {
        version,
        commit: crate::dist::head_commit(&crate::util::workspace_root()),
    };
    let mut verdicts = judge(&facts, &expect);
    if !complete {
        // A guest that died halfway: the checks it reached keep their verdicts, and the
        // missing end says so once.
        verdicts.push(Verdict {
            name: "guest_finished",
            result: Err(format!(
                "the guest's data ended early ({:?}); see {}",
                outcome,
                log.display()
            )),
        });
    }
    println!(
        "[stranger] dist {dist_s:.0} s, boot and checks {:.0} s; data in {}",
        boot_started.elapsed().as_secs_f64(),
        data.display()
    );
    Ok(verdicts)
}

/// fio at /opt/fio with its libraries (the loader too) in /opt/fio/lib, started through the
/// loader by a /bin/fio wrapper: the system library paths stay empty, so our binaries prove
/// they need none.
fn add_fio(t: &mut Tree) -> Result<()> {
    let fio = which("fio").context("fio is missing: run `cargo xtask setup`")?;
    t.copy_host(&fio, "/opt/fio/fio")?;
    let mut loader = None;
    for lib in shared_libs(&fio)? {
        let name = lib
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("ldd named {} for fio", lib.display()))?;
        t.copy_host(&lib, &format!("/opt/fio/lib/{name}"))?;
        if name.starts_with("ld-linux") {
            loader = Some(name);
        }
    }
    let Some(loader) = loader else {
        bail!(
            "ldd {} named no dynamic loader (a static fio?)",
            fio.display()
        );
    };
    t.file(
        "/bin/fio",
        format!(
            "#!/bin/sh\nexec /opt/fio/lib/{loader} --library-path /opt/fio/lib /opt/fio/fio \"$@\"\n"
        )
        .into_bytes(),
        0o755,
    );
    Ok(())
}

/// The guest side: install as the README says, run each tool, send every outcome as a
/// `=== FACT name rc=N` ... `=== END name` frame to /dev/ttyS1, then `=== DATA-END`.
pub fn guest_script(tarball: &str) -> String {
    let top = tarball.trim_end_matches(".tar.gz");
    format!(
        r#"exec 3>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
fact() {{ printf '=== FACT %s rc=%s\n' "$1" "$2" >&3; cat "$3" >&3 2>/dev/null; printf '\n=== END %s\n' "$1" >&3; }}
step() {{ echo "=== stranger: $*"; }}
# wait_ready: until ublk-server prints its device, then DEV=/dev/ublkbN, ID=N
wait_ready() {{
  i=0; while ! grep -q ready /tmp/srv.out 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  DEV=$(sed -n 's/.*ready: \(\/dev\/ublkb[0-9]*\).*/\1/p' /tmp/srv.out); ID=${{DEV#/dev/ublkb}}
  cat /tmp/srv.out /tmp/srv.err > /tmp/srv.all; fact "server-$1" $([ -n "$DEV" ]; echo $?) /tmp/srv.all
  [ -n "$DEV" ]
}}
teardown() {{
{teardown}
}}
export PATH=/usr/local/bin:$PATH
cd /root
step "install {tarball} as the README says"
grep "  {tarball}\$" SHA256SUMS > /tmp/sum && sha256sum -c /tmp/sum > /tmp/o 2>&1; fact sha256 $? /tmp/o
{{ mkdir -p /usr/local/bin /usr/local/share && tar xzf {tarball} && cp {top}/bin/* /usr/local/bin/ && cp -r {top}/share/* /usr/local/share/; }} > /tmp/o 2>&1; fact install $? /tmp/o
ls -l /lib /lib64 /usr/lib /usr/lib64 /usr/local/lib > /tmp/o 2>&1; fact libdirs 0 /tmp/o
for b in {bins}; do
  $b --version > /tmp/o 2>&1; fact "$b-version" $? /tmp/o
  $b --help > /tmp/o 2>&1; fact "$b-help" $? /tmp/o
done
find /usr/local/share -type f | sort > /tmp/o; fact files 0 /tmp/o
fact readme 0 /usr/local/share/doc/ublk-toolkit/README.md
for f in /usr/local/{man}* /usr/local/{bash}* /usr/local/{zsh}* /usr/local/{fish}*; do fact "file:$f" 0 "$f"; done
step "doctor"
ublk-trace doctor > /tmp/o 2>&1; fact doctor $? /tmp/o
ublk-trace doctor --json > /tmp/o 2>/dev/null; fact doctor-json $? /tmp/o
step "ramdisk + fio crc32c verify"
ublk-server run ramdisk --size 64M > /tmp/srv.out 2>/tmp/srv.err &
SRV=$!; WL=
if wait_ready ramdisk; then
  fio --name=verify --filename=$DEV --rw=randwrite --bs=4k --size={verify_bytes} --ioengine=io_uring \
      --direct=1 --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --output-format=json --output=/tmp/fio.json > /tmp/fio.err 2>&1
  fact fio-verify $? /tmp/fio.json; fact fio-stderr 0 /tmp/fio.err
fi
teardown
step "an injected hang: diagnose and watch"
: > /tmp/srv.out
ublk-server run null --queues 1 --depth 4 --inject hang:q=0,tag={hang_tag} > /tmp/srv.out 2>/tmp/srv.err &
SRV=$!; WL=
if wait_ready hang; then
  fio --name=hang --filename=$DEV --rw=randread --bs=4k --iodepth=4 --ioengine=io_uring --direct=1 \
      --time_based --runtime=600 > /dev/null 2>&1 &
  WL=$!
  # until debugfs lists the hung tag in flight (up to 30 s), then past the 1 s stuck threshold
  i=0; while ! grep -q '\.tag={hang_tag},' /sys/kernel/debug/block/ublkb$ID/hctx0/busy 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  sleep 2
  cat /sys/kernel/debug/block/ublkb$ID/hctx0/busy > /tmp/o 2>&1; fact busy 0 /tmp/o
  ublk-trace diagnose dev $ID --json > /tmp/diag.json 2>/tmp/diag.err; fact diagnose $? /tmp/diag.json
  fact diagnose-stderr 0 /tmp/diag.err
  ublk-trace watch dev $ID --dump-screen 120x40 > /tmp/screen.txt 2>/tmp/screen.err; fact screen $? /tmp/screen.txt
  fact screen-stderr 0 /tmp/screen.err
  cat /tmp/screen.txt
fi
teardown
printf '=== DATA-END\n' >&3
exec 3>&-
exit 0
"#,
        teardown = crate::repro::TEARDOWN,
        bins = BINS.join(" "),
        man = MAN_DIR,
        bash = BASH_DIR,
        zsh = ZSH_DIR,
        fish = FISH_DIR,
        verify_bytes = VERIFY_BYTES,
        hang_tag = HANG_TAG,
    )
}

/// One outcome the guest reported: the exit code and the output (or file content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub rc: i32,
    pub text: String,
}

pub type Facts = BTreeMap<String, Fact>;

/// The frames of the data port, and whether its end marker arrived.
pub fn parse_facts(data: &str) -> (Facts, bool) {
    let mut facts = Facts::new();
    let mut open: Option<(String, i32, Vec<&str>)> = None;
    let mut complete = false;
    for line in data.split('\n').map(|l| l.trim_end_matches('\r')) {
        if let Some((name, rc, body)) = open.as_mut() {
            if line.strip_prefix("=== END ") == Some(name.as_str()) {
                let text = body.join("\n").trim_end().to_string();
                facts.insert(std::mem::take(name), Fact { rc: *rc, text });
                open = None;
            } else {
                body.push(line);
            }
        } else if let Some(rest) = line.strip_prefix("=== FACT ") {
            if let Some((name, rc)) = rest.rsplit_once(" rc=")
                && let Ok(rc) = rc.trim().parse()
            {
                open = Some((name.to_string(), rc, Vec::new()));
            }
        } else if line == "=== DATA-END" {
            complete = true;
        }
    }
    (facts, complete)
}

/// Every check's verdict, from the facts.
pub fn judge(facts: &Facts, expect: &Expect) -> Vec<Verdict> {
    CHECKS
        .iter()
        .map(|&name| Verdict {
            name,
            result: check(name, facts, expect),
        })
        .collect()
}

fn check(name: &str, f: &Facts, e: &Expect) -> Result<(), String> {
    match name {
        "tarball_verifies_and_installs" => installed(f),
        "binaries_run_without_shared_libraries" => static_run(f, e),
        "doctor_exits_0" => doctor(f),
        "ramdisk_serves_fio_crc32c_verify" => fio_verify(f),
        "diagnose_finds_injected_hang" => diagnose(f),
        "watch_dump_screen_shows_tag_grid" => screen(f),
        "man_pages_where_the_tarball_says" => man_pages(f),
        "completions_where_the_tarball_says" => completions(f),
        other => Err(format!("no judge for check {other}")),
    }
}

fn get<'a>(f: &'a Facts, name: &str) -> Result<&'a Fact, String> {
    f.get(name)
        .ok_or_else(|| format!("the guest never reported {name:?} (it stopped earlier)"))
}

/// The fact, which must have exited 0.
fn ok<'a>(f: &'a Facts, name: &str) -> Result<&'a Fact, String> {
    let x = get(f, name)?;
    if x.rc != 0 {
        return Err(format!("{name} exited {}: {}", x.rc, tail(&x.text, 15)));
    }
    Ok(x)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn json(fact: &Fact, what: &str) -> Result<Value, String> {
    let start = fact.text.find('{').unwrap_or(0);
    serde_json::from_str(&fact.text[start..])
        .map_err(|e| format!("{what} is not JSON ({e}): {}", tail(&fact.text, 5)))
}

fn installed(f: &Facts) -> Result<(), String> {
    let sum = ok(f, "sha256")?;
    if !sum.text.contains(": OK") {
        return Err(format!("sha256sum -c did not say OK: {}", sum.text));
    }
    ok(f, "install").map(|_| ())
}

fn static_run(f: &Facts, e: &Expect) -> Result<(), String> {
    let dirs = &get(f, "libdirs")?.text;
    if let Some(l) = dirs
        .lines()
        .find(|l| l.contains("ld-linux") || l.contains("libc.so"))
    {
        return Err(format!(
            "the guest has a system C library or loader, so a dynamic binary would run too: {l}"
        ));
    }
    for b in BINS {
        let v = ok(f, &format!("{b}-version"))?;
        let first = v.text.lines().next().unwrap_or_default();
        if first != format!("{b} {}", e.version) {
            return Err(format!(
                "{b} --version starts {first:?}, not \"{b} {}\"",
                e.version
            ));
        }
        if !v.text.contains(&format!("commit: {}", e.commit)) {
            return Err(format!(
                "{b} --version does not name commit {}: {}",
                e.commit, v.text
            ));
        }
    }
    Ok(())
}

fn doctor(f: &Facts) -> Result<(), String> {
    let d = get(f, "doctor")?;
    if d.rc != 0 {
        let fails: Vec<&str> = d.text.lines().filter(|l| l.contains("FAIL")).collect();
        return Err(format!(
            "doctor exited {}: {}",
            d.rc,
            if fails.is_empty() {
                tail(&d.text, 15)
            } else {
                fails.join("\n")
            }
        ));
    }
    let j = json(ok(f, "doctor-json")?, "doctor --json")?;
    if j["kind"] != "ublk-trace.doctor" {
        return Err(format!("doctor --json kind is {}", j["kind"]));
    }
    Ok(())
}

fn fio_verify(f: &Facts) -> Result<(), String> {
    get(f, "server-ramdisk").and_then(|s| {
        if s.rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "ublk-server run ramdisk never got ready: {}",
                s.text
            ))
        }
    })?;
    let x = get(f, "fio-verify")?;
    if x.rc != 0 {
        let err = f.get("fio-stderr").map(|s| s.text.as_str()).unwrap_or("");
        return Err(format!("fio exited {}: {}", x.rc, tail(err, 10)));
    }
    let j = json(x, "fio's output")?;
    let job = &j["jobs"][0];
    if job["error"] != 0 {
        return Err(format!("fio's job error is {}", job["error"]));
    }
    // The verify pass reads back everything written: both byte counts are the job's size.
    for dir in ["write", "read"] {
        let n = job[dir]["io_bytes"].as_u64();
        if n != Some(VERIFY_BYTES) {
            return Err(format!(
                "fio {dir} {n:?} bytes, expected {VERIFY_BYTES} (the verify pass reads back what was written)"
            ));
        }
    }
    Ok(())
}

fn diagnose(f: &Facts) -> Result<(), String> {
    let x = get(f, "diagnose")?;
    let j = json(x, "diagnose --json")?;
    if j["kind"] != "ublk-trace.diagnose" {
        return Err(format!("diagnose --json kind is {}", j["kind"]));
    }
    let fs = j["findings"].as_array().cloned().unwrap_or_default();
    let stuck: Vec<(Option<u64>, Option<u64>)> = fs
        .iter()
        .filter(|x| x["class"] == "STUCK_IN_SERVER")
        .map(|x| (x["queue"].as_u64(), x["tag"].as_u64()))
        .collect();
    let classes: Vec<&str> = fs.iter().filter_map(|x| x["class"].as_str()).collect();
    if !stuck.contains(&(Some(0), Some(HANG_TAG))) {
        return Err(format!(
            "no STUCK_IN_SERVER on q0 tag {HANG_TAG}; findings {classes:?}, stuck {stuck:?}"
        ));
    }
    if stuck.len() != 1 {
        return Err(format!(
            "tags other than {HANG_TAG} called stuck: {stuck:?}"
        ));
    }
    // 1: a finding names a problem (documented in `diagnose --help`).
    if x.rc != 1 {
        return Err(format!("diagnose exited {} with a finding, not 1", x.rc));
    }
    Ok(())
}

/// The state glyph of `tag` in queue `q`'s grid row that starts at tag 0, in the wide layout
/// (`q0    0 .       S   3s  `: an 8-column label, then 8 columns per tag).
pub fn grid_cell(screen: &str, q: u64, tag: u64) -> Option<char> {
    let label = format!("q{q}");
    screen.lines().find_map(|l| {
        let row: Vec<char> = l.chars().skip_while(|c| *c != '│').skip(1).collect();
        let head: String = row.iter().take(8).collect();
        let mut words = head.split_whitespace();
        if words.next() != Some(label.as_str()) || words.next() != Some("0") {
            return None;
        }
        let at = 8 + 8 * usize::try_from(tag).ok()?;
        row.get(at).copied()
    })
}

fn screen(f: &Facts) -> Result<(), String> {
    let s = &ok(f, "screen")?.text;
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() > 40 || lines.iter().any(|l| l.chars().count() > 120) {
        return Err(format!(
            "the screen is not 120x40: {} lines, widest {}",
            lines.len(),
            lines.iter().map(|l| l.chars().count()).max().unwrap_or(0)
        ));
    }
    if !lines
        .iter()
        .any(|l| l.contains(" Tags ") && l.contains("waiting"))
    {
        return Err(format!("no tag grid (its title) on the screen:\n{s}"));
    }
    match grid_cell(s, 0, HANG_TAG) {
        Some('S') => Ok(()),
        other => Err(format!(
            "tag {HANG_TAG} of q0 shows {other:?} in the grid, not S (in the server):\n{s}"
        )),
    }
}

/// `Commands:` of a `--help`, without `help`.
pub fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_string)
        .collect()
}

/// The README inside the tarball names `dir`, and the file is installed there.
fn documented_file<'a>(f: &'a Facts, dir: &str, name: &str) -> Result<&'a Fact, String> {
    if !get(f, "readme")?.text.contains(dir) {
        return Err(format!("the tarball's README does not name {dir}"));
    }
    let path = format!("/usr/local/{dir}{name}");
    if !get(f, "files")?.text.lines().any(|l| l == path) {
        return Err(format!("{path} is not installed"));
    }
    get(f, &format!("file:{path}"))
}

fn man_pages(f: &Facts) -> Result<(), String> {
    for b in BINS {
        let help = &ok(f, &format!("{b}-help"))?.text;
        let subs = subcommands(help);
        if subs.is_empty() {
            return Err(format!("{b} --help lists no subcommands: {help}"));
        }
        let pages = std::iter::once(b.to_string()).chain(subs.iter().map(|s| format!("{b}-{s}")));
        for page in pages {
            let text = &documented_file(f, MAN_DIR, &format!("{page}.1"))?.text;
            if !text.contains(&format!(".TH {page} 1")) {
                return Err(format!("{page}.1 has no `.TH {page} 1` header"));
            }
            if page != b && !text.contains("EXIT STATUS") {
                return Err(format!("{page}.1 lists no exit status"));
            }
        }
    }
    Ok(())
}

/// Whether `text` registers a completion for the command `b` in `dir`'s shell.
fn registers(dir: &str, text: &str, b: &str) -> bool {
    let mut lines = text.lines().map(str::trim);
    match dir {
        // `complete -F _ublk__trace -o bashdefault -o default ublk-trace`
        BASH_DIR => lines.any(|l| l.starts_with("complete -F ") && l.ends_with(&format!(" {b}"))),
        ZSH_DIR => lines.next() == Some(format!("#compdef {b}").as_str()),
        FISH_DIR => lines.any(|l| l.starts_with(&format!("complete -c {b} "))),
        _ => false,
    }
}

fn completions(f: &Facts) -> Result<(), String> {
    for b in BINS {
        let subs = subcommands(&ok(f, &format!("{b}-help"))?.text);
        for (dir, name) in [
            (BASH_DIR, b.to_string()),
            (ZSH_DIR, format!("_{b}")),
            (FISH_DIR, format!("{b}.fish")),
        ] {
            let text = &documented_file(f, dir, &name)?.text;
            if !registers(dir, text, b) {
                return Err(format!("{dir}{name} registers no completion for {b}"));
            }
            if let Some(s) = subs.iter().find(|s| !text.contains(s.as_str())) {
                return Err(format!("{dir}{name} does not complete subcommand {s}"));
            }
        }
    }
    Ok(())
}

/// Print libtest-like lines for the verdicts; returns (passed, failed).
pub fn report(verdicts: &[Verdict]) -> (u64, u64) {
    let mut passed = 0;
    let mut failed = 0;
    for v in verdicts {
        match &v.result {
            Ok(()) => {
                passed += 1;
                println!("test stranger::{} ... ok", v.name);
            }
            Err(why) => {
                failed += 1;
                println!(
                    "test stranger::{} ... FAILED\n    {}",
                    v.name,
                    why.replace('\n', "\n    ")
                );
            }
        }
    }
    (passed, failed)
}

/// Whether libtest-style `filter` arguments select any stranger check (none: all run).
pub fn selected(filter: &[String]) -> bool {
    filter.is_empty()
        || CHECKS.iter().any(|c| {
            filter
                .iter()
                .any(|f| format!("stranger::{c}").contains(f.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data-port frame: fact name, exit code, text.
    type Frame = (String, i32, String);

    const SCREEN: &str = " ublk-trace dev 0 LIVE | server 233 sleeping (S) | URING_CMD_COMP_IN_TASK\n\
┌ Tags . waiting  Q queued  S in server  C committed  ? unknown  ────────┐┌ Oldest in flight (1) ─┐\n\
│q0    0 .       .       S   14s .                                       ││q0 t2   IN_SERVER    14s│\n\
└────────────────────────────────────────────────────────────────────────┘└───────────────────────┘";

    const TRACE_HELP: &str = "Usage: ublk-trace [OPTIONS] <COMMAND>\n\nCommands:\n  doctor    Check\n  watch     Live view\n  help      Print this message\n\nOptions:\n  -h, --help  Print help";
    const SERVER_HELP: &str = "Usage: ublk-server [OPTIONS] <COMMAND>\n\nCommands:\n  run       Serve\n  help      Print this message\n\nOptions:\n  -h, --help  Print help";

    fn man(page: &str) -> String {
        format!(".ie \\n(.g .ds Aq \\(aq\n.TH {page} 1  \"x\"\n.SH \"EXIT STATUS\"\n  0 done")
    }

    fn expect() -> Expect {
        Expect {
            version: "0.1.0".into(),
            commit: "6eee5074d2c203ae0f62eecf00dcb461ce92ee7c".into(),
        }
    }

    /// The data port's frames for a release that works, as the guest script writes them.
    fn frames() -> Vec<Frame> {
        let c = "6eee5074d2c203ae0f62eecf00dcb461ce92ee7c";
        let fio = format!(
            "{{\"jobs\":[{{\"jobname\":\"verify\",\"error\":0,\"read\":{{\"io_bytes\":{VERIFY_BYTES}}},\"write\":{{\"io_bytes\":{VERIFY_BYTES}}}}}]}}"
        );
        let diag = format!(
            "{{\"kind\":\"ublk-trace.diagnose\",\"version\":1,\"findings\":[{{\"class\":\"STUCK_IN_SERVER\",\"dev\":0,\"queue\":0,\"tag\":{HANG_TAG}}},{{\"class\":\"WAITERS\",\"dev\":0,\"queue\":null,\"tag\":null}}]}}"
        );
        let mut v: Vec<Frame> = vec![
            (
                "sha256".into(),
                0,
                "ublk-toolkit-0.1.0-x86_64-linux.tar.gz: OK".into(),
            ),
            ("install".into(), 0, String::new()),
            (
                "libdirs".into(),
                0,
                "ls: /lib: No such file or directory".into(),
            ),
            (
                "ublk-trace-version".into(),
                0,
                format!("ublk-trace 0.1.0\ncommit: {c}\n"),
            ),
            (
                "ublk-server-version".into(),
                0,
                format!("ublk-server 0.1.0\ncommit: {c}\n"),
            ),
            ("ublk-trace-help".into(), 0, TRACE_HELP.into()),
            ("ublk-server-help".into(), 0, SERVER_HELP.into()),
            (
                "readme".into(),
                0,
                format!("| tarball | `{MAN_DIR}`, `{BASH_DIR}`, `{ZSH_DIR}`, `{FISH_DIR}` |"),
            ),
            (
                "doctor".into(),
                0,
                "[ OK ] kernel 6.12\n0 failed check(s)".into(),
            ),
            (
                "doctor-json".into(),
                0,
                "{\"kind\":\"ublk-trace.doctor\",\"version\":1}".into(),
            ),
            (
                "server-ramdisk".into(),
                0,
                "dev 0 ready: /dev/ublkb0".into(),
            ),
            ("fio-verify".into(), 0, fio),
            ("diagnose".into(), 1, diag),
            ("screen".into(), 0, SCREEN.into()),
        ];
        let mut files = Vec::new();
        for (b, subs) in [
            ("ublk-trace", &["doctor", "watch"][..]),
            ("ublk-server", &["run"][..]),
        ] {
            for page in
                std::iter::once(b.to_string()).chain(subs.iter().map(|s| format!("{b}-{s}")))
            {
                files.push((format!("{MAN_DIR}{page}.1"), man(&page)));
            }
            let words = subs.join(" ");
            files.push((
                format!("{BASH_DIR}{b}"),
                format!(
                    "_f() {{ opts=\"{words}\"; }}\n    complete -F _f -o bashdefault -o default {b}"
                ),
            ));
            files.push((format!("{ZSH_DIR}_{b}"), format!("#compdef {b}\n'{words}'")));
            files.push((
                format!("{FISH_DIR}{b}.fish"),
                format!("complete -c {b} -n \"x\" -f -a \"{words}\""),
            ));
        }
        let listing: Vec<String> = files
            .iter()
            .map(|(p, _)| format!("/usr/local/{p}"))
            .collect();
        v.push(("files".into(), 0, listing.join("\n")));
        v.extend(
            files
                .into_iter()
                .map(|(p, t)| (format!("file:/usr/local/{p}"), 0, t)),
        );
        v
    }

    fn render(frames: &[Frame], end: bool) -> String {
        let mut s = String::new();
        for (name, rc, text) in frames {
            // As `fact` writes them through the tty (\r\n), with the extra newline before END.
            s.push_str(&format!(
                "=== FACT {name} rc={rc}\r\n{}\r\n\r\n=== END {name}\r\n",
                text.replace('\n', "\r\n")
            ));
        }
        if end {
            s.push_str("=== DATA-END\r\n");
        }
        s
    }

    fn failures(frames: &[Frame]) -> Vec<&'static str> {
        let (facts, complete) = parse_facts(&render(frames, true));
        assert!(complete);
        judge(&facts, &expect())
            .into_iter()
            .filter(|v| v.result.is_err())
            .map(|v| v.name)
            .collect()
    }

    /// Replace one frame's text (and rc).
    fn with(name: &str, rc: i32, text: &str) -> Vec<Frame> {
        let mut v = frames();
        let f = v.iter_mut().find(|f| f.0 == name).expect("frame exists");
        f.1 = rc;
        f.2 = text.to_string();
        v
    }

    #[test]
    fn a_working_release_passes_every_check() {
        let v = {
            let (facts, _) = parse_facts(&render(&frames(), true));
            judge(&facts, &expect())
        };
        let bad: Vec<String> = v
            .iter()
            .filter_map(|v| v.result.as_ref().err().map(|e| format!("{}: {e}", v.name)))
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(v.len(), CHECKS.len());
    }

    #[test]
    fn frames_parse_through_the_tty_and_a_cut_stream_is_incomplete() {
        let all = render(&frames(), true);
        let (facts, complete) = parse_facts(&all);
        assert!(complete);
        assert_eq!(facts["diagnose"].rc, 1);
        assert_eq!(facts["ublk-trace-version"].text.lines().count(), 2);
        // Cut inside the screen frame: that fact and everything after it are missing.
        let cut = &all[..all.find("=== FACT screen").expect("screen frame") + 30];
        let (facts, complete) = parse_facts(cut);
        assert!(!complete);
        assert!(facts.contains_key("diagnose") && !facts.contains_key("screen"));
    }

    #[test]
    fn each_defect_fails_its_own_check() {
        let cases: Vec<(Vec<Frame>, &str)> = vec![
            (
                with("sha256", 1, "ublk-toolkit.tar.gz: FAILED"),
                "tarball_verifies_and_installs",
            ),
            (
                with("libdirs", 0, "/lib64:\nld-linux-x86-64.so.2"),
                "binaries_run_without_shared_libraries",
            ),
            (
                with(
                    "ublk-server-version",
                    0,
                    "ublk-server 0.1.0\ncommit: unknown",
                ),
                "binaries_run_without_shared_libraries",
            ),
            (
                with("doctor", 1, "[FAIL] kprobes missing\n1 failed check(s)"),
                "doctor_exits_0",
            ),
            (
                with(
                    "fio-verify",
                    0,
                    "{\"jobs\":[{\"error\":0,\"read\":{\"io_bytes\":4096},\"write\":{\"io_bytes\":33554432}}]}",
                ),
                "ramdisk_serves_fio_crc32c_verify",
            ),
            (
                with("fio-verify", 1, "{\"jobs\":[{\"error\":84}]}"),
                "ramdisk_serves_fio_crc32c_verify",
            ),
            (
                with(
                    "diagnose",
                    1,
                    "{\"kind\":\"ublk-trace.diagnose\",\"findings\":[{\"class\":\"STUCK_IN_SERVER\",\"queue\":0,\"tag\":3}]}",
                ),
                "diagnose_finds_injected_hang",
            ),
            (
                with(
                    "diagnose",
                    0,
                    "{\"kind\":\"ublk-trace.diagnose\",\"findings\":[]}",
                ),
                "diagnose_finds_injected_hang",
            ),
            (
                with("screen", 0, &SCREEN.replace("S   14s", ".      ")),
                "watch_dump_screen_shows_tag_grid",
            ),
            (
                with("screen", 0, &SCREEN.replace(" Tags ", " Devs ")),
                "watch_dump_screen_shows_tag_grid",
            ),
            (
                // `state` listed in --help, without a page or a completion for it.
                with(
                    "ublk-trace-help",
                    0,
                    &TRACE_HELP.replace("  help", "  state     Driver\n  help"),
                ),
                "man_pages_where_the_tarball_says,completions_where_the_tarball_says",
            ),
            (
                with(
                    &format!("file:/usr/local/{ZSH_DIR}_ublk-trace"),
                    0,
                    "'doctor watch'",
                ),
                "completions_where_the_tarball_says",
            ),
            (
                with("readme", 0, &format!("`{MAN_DIR}` only")),
                "completions_where_the_tarball_says",
            ),
        ];
        for (frames, want) in cases {
            assert_eq!(failures(&frames).join(","), want);
        }
    }

    #[test]
    fn grid_cells_are_read_by_column() {
        assert_eq!(grid_cell(SCREEN, 0, 0), Some('.'));
        assert_eq!(grid_cell(SCREEN, 0, 2), Some('S'));
        assert_eq!(grid_cell(SCREEN, 0, 3), Some('.'));
        assert_eq!(grid_cell(SCREEN, 1, 2), None);
    }

    #[test]
    fn help_lists_subcommands_without_help() {
        assert_eq!(subcommands(TRACE_HELP), vec!["doctor", "watch"]);
        assert!(subcommands("Usage: x\n").is_empty());
    }

    #[test]
    fn a_filter_selects_the_stage_like_a_test_name() {
        assert!(selected(&[]));
        assert!(selected(&["stranger".into()]));
        assert!(selected(&["doctor_exits".into()]));
        assert!(!selected(&["smoke".into()]));
    }
}
