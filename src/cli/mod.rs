//! Argument parsing and dispatch for the `deeplock` binary.

mod bench;
mod demo;
mod keyfile;
mod out;
mod report;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use deeplock::engine::{self, DeviceChoice};
use deeplock::files::{self, Options};
use deeplock::Direction;
use out::CliResult;

#[derive(Parser)]
#[command(
    name = "deeplock",
    version,
    about = "Lock neural-network weights with a secret key; unlock them fast on GPU or CPU",
    long_about = "Lock neural-network weights with a secret key (Deep-Lock, scheme v2 \
                  aes128-ctr-sbox-gmac: locked and authenticated); unlock them fast on any GPU \
                  (wgpu) or CPU, refusing a file changed after locking. Keys are read from a file, from \
                  standard input (--key-file -) or from the file named by DEEPLOCK_KEY_FILE, \
                  never from the command line."
)]
struct Cli {
    /// Say more: which device and adapter did the work.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Device {
    /// A real GPU if there is one, else the CPU.
    Auto,
    /// The CPU fast path on all cores.
    Cpu,
    /// A GPU adapter (software ones included); fails if there is none.
    Gpu,
}

impl From<Device> for DeviceChoice {
    fn from(d: Device) -> Self {
        match d {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Gpu => DeviceChoice::Gpu,
        }
    }
}

#[derive(clap::Args)]
struct KeyArg {
    /// File holding the key as 32 hex characters; `-` reads it from standard input.
    #[arg(long, env = "DEEPLOCK_KEY_FILE", value_name = "KEYFILE")]
    key_file: PathBuf,
}

impl KeyArg {
    /// The key file, which no output may replace (none when the key comes from stdin).
    fn protected(&self) -> Option<PathBuf> {
        (self.key_file.as_os_str() != "-").then(|| self.key_file.clone())
    }
}

/// Refuses `-o -`: a model is written to a file and renamed into place when complete.
fn refuse_stdout(output: &Path) -> CliResult<()> {
    if output.as_os_str() == "-" {
        return Err(deeplock::Error::Invalid(
            "-o - (standard output) is not supported: a model is written to a file, renamed into place when complete; name the output file".into(),
        )
        .into());
    }
    Ok(())
}

#[derive(clap::Args)]
struct DirArgs {
    /// Leave files of a directory input that match this glob (relative to it: `*.bin`,
    /// `onnx/*`) out of the output (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
}

#[derive(clap::Args)]
struct StreamArgs {
    /// At most this much file data in memory at once (read ahead, being transformed,
    /// waiting to be written), all the shards of a directory together: bytes, or with a
    /// K, M or G suffix (KiB, MiB, GiB); at least 1M is used.
    // Taken as text and parsed by `bytes`, not by clap, so that a bad size is refused
    // with the one-line error of every other check (clap's own span several lines);
    // negative numbers are let through to be refused there too.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "256M",
        allow_negative_numbers = true
    )]
    max_in_flight: String,
}

impl StreamArgs {
    /// `--max-in-flight` in bytes.
    fn bytes(&self) -> CliResult<u64> {
        parse_size(&self.max_in_flight).map_err(|why| {
            deeplock::Error::Invalid(format!("--max-in-flight {:?} {why}", self.max_in_flight))
                .into()
        })
    }
}

/// A size in bytes: digits, then K, M or G (powers of 1024, an optional `iB` or `B`
/// after them) or nothing; the error says why not, after the text it is given.
fn parse_size(text: &str) -> Result<u64, String> {
    const EXAMPLE: &str =
        "give a whole number of bytes, or of K, M or G (KiB, MiB, GiB), such as 256M";
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!("is not a size; {EXAMPLE}"));
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ if unit.starts_with(['.', ',']) => return Err(format!("is not whole; {EXAMPLE}")),
        _ => return Err(format!("has an unknown unit {unit:?}; {EXAMPLE}")),
    };
    let too_large = || format!("is too large; {EXAMPLE}");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    match n.checked_mul(1 << shift) {
        Some(0) => Err(format!("is zero; {EXAMPLE}")),
        Some(bytes) => Ok(bytes),
        None => Err(too_large()),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a new random key file (mode 0600); never overwrites.
    Keygen {
        /// Where to write the key.
        #[arg(short, long, value_name = "KEYFILE")]
        output: PathBuf,
    },
    /// Lock a model (safetensors, ONNX, TFLite, GGUF, TF.js) or a checkpoint directory.
    Lock {
        /// The model: a model file (a TF.js model by its model.json, its weight files
        /// written beside the output) or a directory of them.
        input: PathBuf,
        /// Where to write the locked model.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        key: KeyArg,
        /// Where to run.
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Lock only tensors whose names match this glob (repeatable; default: all).
        #[arg(long, value_name = "GLOB")]
        only: Vec<String>,
        #[command(flatten)]
        dir: DirArgs,
        /// Copy weight files deeplock cannot lock (PyTorch .bin, Keras .h5, ...) that match
        /// this glob into a directory output as they are, in the clear (repeatable).
        #[arg(long, value_name = "GLOB")]
        allow_plaintext: Vec<String>,
        #[command(flatten)]
        stream: StreamArgs,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
    },
    /// Unlock a locked file or directory.
    Unlock {
        /// The locked model.
        input: PathBuf,
        /// Where to write the unlocked model.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        key: KeyArg,
        /// Where to run.
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        stream: StreamArgs,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
    },
    /// Show whether a file is locked, its scheme and salt, and its tensors.
    Inspect {
        /// A model file or a directory of them.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check a locked model without writing anything: the key, and every tag over its
    /// tensors and header (on all cores); exit 0 only if all of it checks.
    Verify {
        /// A locked file or directory.
        file: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Join the shards of a checkpoint directory, each locked on its own (on any
    /// machine, under one key), by writing its record from their headers alone.
    Join {
        /// The directory of locked shards.
        dir: PathBuf,
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        dirs: DirArgs,
        /// Replace an existing record (after re-locking a shard).
        #[arg(long)]
        force: bool,
    },
    /// Re-authenticate a file locked with scheme v1 as v2: the same locked bytes, with
    /// tags over them (upgrade only copies nobody could have tampered with).
    Upgrade {
        /// The v1-locked model: a .safetensors file or a directory of shards.
        input: PathBuf,
        /// Where to write the v2 file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        key: KeyArg,
        /// Replace an existing output.
        #[arg(long)]
        force: bool,
    },
    /// Lock and unlock a built-in CIFAR-10-sized model and report speed.
    Demo,
    /// Measure lock and unlock throughput on the CPU and every GPU adapter.
    Bench(bench::BenchArgs),
}

/// What `lock` and `unlock` were asked to do.
struct Transform<'a> {
    dir: Direction,
    input: &'a Path,
    output: &'a Path,
    key: &'a KeyArg,
    device: Device,
    only: Vec<String>,
    exclude: Vec<String>,
    allow_plaintext: Vec<String>,
    max_in_flight: u64,
    force: bool,
}

/// `lock` and `unlock`: load the key, pick the engine, stream with a progress bar.
fn transform(t: Transform, verbose: bool) -> CliResult<i32> {
    refuse_stdout(t.output)?;
    // Interrupted, deeplock removes what it was writing; killed, it leaves temporaries
    // that the next run beside the same output finds.
    deeplock::output::remove_temporaries_on_signals()?;
    for s in deeplock::output::sweep_stale(t.output) {
        if s.removed {
            out::warn(format_args!(
                "deeplock: removed {}, left by an interrupted deeplock run",
                report::shown_path(&s.path)
            ));
        } else {
            out::warn(format_args!(
                "deeplock: note: {} looks left by an interrupted deeplock run{}; remove it if no deeplock is running there",
                report::shown_path(&s.path),
                s.pid.map(|p| format!(" (process {p})")).unwrap_or_default()
            ));
        }
    }
    let key = keyfile::load(&t.key.key_file)?;
    let total = report::total_data_bytes(t.input)?;
    let mut engine = engine::select_for(t.device.into(), total)?;
    let (verb, done) = match t.dir {
        Direction::Lock => ("locking", "locked"),
        Direction::Unlock => ("unlocking", "unlocked"),
    };
    if verbose {
        out::warn(format_args!("deeplock: {verb} on {}", engine.describe()));
    }
    let bar = report::progress(total, verb);
    let progress = |n: u64| bar.inc(n);
    let opts = Options {
        only: t.only,
        force: t.force,
        progress: Some(&progress),
        key_file: t.key.protected(),
        exclude: t.exclude,
        allow_plaintext: t.allow_plaintext,
        max_in_flight: t.max_in_flight,
        ..Options::default()
    };
    let r = match t.dir {
        Direction::Lock => files::lock(t.input, t.output, &key, engine.as_mut(), &opts)?,
        Direction::Unlock => files::unlock(t.input, t.output, &key, engine.as_mut(), &opts)?,
    };
    bar.finish_and_clear();
    out::buffered(|w| report::print_done(w, done, t.input, t.output, &r))
        .map_err(|e| e.done(|| out::written(t.output)))?;
    for (path, why) in &r.skipped {
        out::warn(format_args!(
            "deeplock: left out {} ({})",
            report::shown_path(path),
            why.describe()
        ));
    }
    for path in &r.unauthenticated {
        out::warn(format_args!(
            "deeplock: notice: {} was locked with scheme v1, which carries no authentication: a change to its locked bytes would have gone unnoticed; lock the original again, or `deeplock upgrade` copies you trust",
            report::shown_path(path)
        ));
    }
    for path in &r.plaintext {
        out::warn(format_args!(
            "deeplock: warning: copied {} in the clear, as allowed",
            report::shown_path(path)
        ));
    }
    for (path, name, why) in &r.left_clear {
        out::warn(format_args!(
            "deeplock: notice: {}: tensor {:?} left in the clear, its bytes cannot be locked in place: {why}",
            report::shown_path(path),
            name
        ));
    }
    if r.clear_bool > 0 {
        out::warn(format_args!(
            "deeplock: note: {} BOOL tensor(s) left in the clear: locked bytes would not be valid booleans",
            r.clear_bool
        ));
    }
    Ok(0)
}

/// What the command line adds to a library error: the flag that gets around it.
fn hint(e: &out::CliError) -> &'static str {
    match e {
        out::CliError::Lib(deeplock::Error::Gpu(_)) => "; pass --device cpu to run on the CPU",
        _ => "",
    }
}

/// Runs the command line; returns the process exit code: 0 on success and when the
/// reader of standard output closed it early (`deeplock inspect FILE | head`), 1 on any
/// error, after one line on standard error.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => 0,
        Err(e) => {
            // Paths and names in the message come from the file system: escaped, so a
            // file name cannot forge lines or drive the terminal.
            out::warn(format_args!(
                "deeplock: error: {}{}",
                report::shown(&e.to_string()),
                hint(&e)
            ));
            1
        }
    }
}

fn run(cli: Cli) -> CliResult<i32> {
    let verbose = cli.verbose;
    match cli.command {
        Command::Keygen { output } => keyfile::keygen(&output).map(|()| 0),
        Command::Lock {
            input,
            output,
            key,
            device,
            only,
            dir,
            allow_plaintext,
            stream,
            force,
        } => transform(
            Transform {
                dir: Direction::Lock,
                input: &input,
                output: &output,
                key: &key,
                device,
                only,
                exclude: dir.exclude,
                allow_plaintext,
                max_in_flight: stream.bytes()?,
                force,
            },
            verbose,
        ),
        Command::Unlock {
            input,
            output,
            key,
            device,
            dir,
            stream,
            force,
        } => transform(
            Transform {
                dir: Direction::Unlock,
                input: &input,
                output: &output,
                key: &key,
                device,
                only: Vec::new(),
                exclude: dir.exclude,
                allow_plaintext: Vec::new(),
                max_in_flight: stream.bytes()?,
                force,
            },
            verbose,
        ),
        Command::Inspect { file, json } => {
            let found = files::inspect(&file)?;
            if json {
                out::buffered(|w| writeln!(w, "{}", report::inspection_json(&found)))?;
            } else {
                out::buffered(|w| report::print_inspection(w, &found))?;
            }
            Ok(0)
        }
        Command::Verify { file, key } => {
            let key = keyfile::load(&key.key_file)?;
            let v = files::verify(&file, &key)?;
            out::buffered(|w| report::print_verified(w, &file, &v))?;
            Ok(0)
        }
        Command::Join {
            dir,
            key,
            dirs,
            force,
        } => {
            deeplock::output::remove_temporaries_on_signals()?;
            let k = keyfile::load(&key.key_file)?;
            let opts = Options {
                force,
                key_file: key.protected(),
                exclude: dirs.exclude,
                ..Options::default()
            };
            let n = files::join(&dir, &k, &opts)?;
            out::outln!(
                "joined {n} shard(s) of {}: wrote {}",
                report::shown_path(&dir),
                report::shown_path(&dir.join(deeplock::checkpoint::RECORD_NAME))
            );
            Ok(0)
        }
        Command::Upgrade {
            input,
            output,
            key,
            force,
        } => {
            refuse_stdout(&output)?;
            deeplock::output::remove_temporaries_on_signals()?;
            let k = keyfile::load(&key.key_file)?;
            let opts = Options {
                force,
                key_file: key.protected(),
                ..Options::default()
            };
            let r = files::upgrade(&input, &output, &k, &opts)?;
            out::buffered(|w| report::print_done(w, "upgraded to v2", &input, &output, &r))
                .map_err(|e| e.done(|| out::written(&output)))?;
            Ok(0)
        }
        Command::Demo => demo::run(verbose).map(|()| 0),
        Command::Bench(args) => bench::run(args).map(|()| 0),
    }
}
