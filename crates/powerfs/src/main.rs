//! `raftkv-powerfs --backing <DIR> <MOUNTPOINT>`: mount the power-loss file
//! system and serve the `crash`/`stats`/`sync` protocol on stdin/stdout. See
//! the library docs (`raftkv_powerfs`) for the semantics.

fn main() -> std::process::ExitCode {
    raftkv_powerfs::app::main()
}
