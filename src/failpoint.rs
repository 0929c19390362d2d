//! Named points where a test can make this process wait, fail or crash.
//!
//! Only builds with the cargo feature `failpoints` have them (the fault tests and the soak
//! use such a build); in every other build [`failpoint!`](crate::failpoint!) expands to
//! `Ok(())` and costs nothing. Points are configured with the `fail` crate's action syntax,
//! from the `FAILPOINTS` environment variable at start (`name=actions;name=actions`) or at
//! run time through the admin API (`PUT /v1/failpoints/<name>`, a body of actions).
//!
//! cutover runs on tokio, where a point must not block its thread (a single-threaded
//! runtime would stop serving, the admin API included). So the `fail` crate's blocking
//! tasks (`pause`, `sleep`, `delay`, `panic`) are refused, and what a point does is said
//! with `return(...)`:
//!
//! | actions | what the point does |
//! |---|---|
//! | `return` or `return(error)` | the step fails with an injected error |
//! | `return(pause)` | waits, without blocking, until the point is configured again |
//! | `return(sleep:MS)` | waits MS milliseconds, then goes on |
//! | `return(crash)` | the process exits at once with status 137, as after SIGKILL |
//! | `return(lost)` | (answer points) the request was applied but its answer is lost |
//! | `off` | nothing |
//!
//! The usual prefixes work: `1*return(pause)` pauses once, `25%return` fails a quarter of
//! the hits, `2*return->return(pause)` fails twice and then pauses.

/// The error a point injects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failpoint {name}: injected {what}")]
pub struct Injected {
    pub name: &'static str,
    /// `error`, or `lost` for a point that stands for a lost answer.
    pub what: String,
}

impl Injected {
    /// Whether the point says the request was applied and only its answer was lost.
    pub fn answer_lost(&self) -> bool {
        self.what == "lost"
    }
}

/// Evaluates a named point: `Ok(())` to go on, or the injected error. Expands to `Ok(())`
/// without the `failpoints` feature.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let hit = $crate::failpoint::hit($name).await;
        #[cfg(not(feature = "failpoints"))]
        let hit = Ok::<(), $crate::failpoint::Injected>(());
        hit
    }};
}

#[cfg(feature = "failpoints")]
pub use enabled::*;

#[cfg(feature = "failpoints")]
mod enabled {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::Injected;

    /// How often a paused point looks whether it was configured again.
    const PAUSE_POLL: Duration = Duration::from_millis(2);

    #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PointState {
        pub actions: String,
        /// Times the point was reached (whatever it then did).
        pub hits: u64,
        /// Callers waiting at the point now.
        pub paused: u64,
    }

    static STATE: parking_lot::Mutex<BTreeMap<String, PointState>> = parking_lot::Mutex::new(BTreeMap::new());

    fn actions_of(name: &str) -> String {
        fail::list()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .unwrap_or_default()
    }

    /// Sets the actions of `name` (see the module's table).
    pub fn configure(name: &str, actions: &str) -> Result<(), String> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("{name:?} is not a failpoint name"));
        }
        let actions = actions.trim();
        for task in actions.split("->") {
            let task = task.rsplit('*').next().unwrap_or(task);
            let task = task.rsplit('%').next().unwrap_or(task).trim();
            let word = task.split('(').next().unwrap_or(task);
            if !matches!(word, "off" | "return" | "print" | "yield") {
                return Err(format!(
                    "{task:?}: cutover's points take off, return, return(error), return(pause), return(sleep:MS), return(crash) or return(lost)"
                ));
            }
            if let Some(arg) = task.strip_prefix("return(").and_then(|a| a.strip_suffix(')')) {
                parse_arg(arg)?;
            }
        }
        fail::cfg(name, actions)?;
        STATE.lock().entry(name.to_string()).or_default().actions = actions.to_string();
        tracing::info!(failpoint = name, actions, "failpoint configured");
        Ok(())
    }

    pub fn remove(name: &str) {
        fail::remove(name);
        if let Some(s) = STATE.lock().get_mut(name) {
            s.actions.clear();
        }
        tracing::info!(failpoint = name, "failpoint removed");
    }

    /// Every point configured or reached so far.
    pub fn list() -> BTreeMap<String, PointState> {
        STATE.lock().clone()
    }

    /// Reads `FAILPOINTS` (`name=actions;...`), as the `fail` crate spells it.
    pub fn from_env() -> Result<(), String> {
        let Ok(all) = std::env::var("FAILPOINTS") else {
            return Ok(());
        };
        for item in all.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, actions) = item
                .split_once('=')
                .ok_or_else(|| format!("FAILPOINTS: {item:?} is not name=actions"))?;
            configure(name.trim(), actions).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
        }
        Ok(())
    }

    enum Arg {
        Error(String),
        Pause,
        Sleep(Duration),
        Crash,
    }

    fn parse_arg(arg: &str) -> Result<Arg, String> {
        Ok(match arg {
            "" | "error" => Arg::Error("error".into()),
            "lost" => Arg::Error("lost".into()),
            "pause" => Arg::Pause,
            "crash" => Arg::Crash,
            other => match other.strip_prefix("sleep:").map(str::parse::<u64>) {
                Some(Ok(ms)) => Arg::Sleep(Duration::from_millis(ms)),
                _ => return Err(format!("return({other}): unknown; see the failpoint table")),
            },
        })
    }

    fn count(name: &str, f: impl FnOnce(&mut PointState)) {
        f(STATE.lock().entry(name.to_string()).or_default());
    }

    /// What `failpoint!(name)` does in a build with the feature.
    pub async fn hit(name: &'static str) -> Result<(), Injected> {
        let Some(arg) = fail::eval(name, |a| a.unwrap_or_default()) else {
            return Ok(());
        };
        count(name, |s| s.hits += 1);
        match parse_arg(&arg) {
            Ok(Arg::Error(what)) => {
                tracing::warn!(failpoint = name, what = %what, "failpoint: injecting an error");
                Err(Injected { name, what })
            }
            Ok(Arg::Sleep(d)) => {
                tracing::info!(failpoint = name, ms = d.as_millis() as u64, "failpoint: sleeping");
                tokio::time::sleep(d).await;
                Ok(())
            }
            Ok(Arg::Crash) => {
                tracing::error!(failpoint = name, "failpoint: crashing");
                std::process::exit(137)
            }
            Ok(Arg::Pause) => {
                let paused_with = actions_of(name);
                tracing::info!(failpoint = name, "failpoint: paused");
                struct Unpause(&'static str);
                impl Drop for Unpause {
                    fn drop(&mut self) {
                        count(self.0, |s| s.paused -= 1);
                    }
                }
                count(name, |s| s.paused += 1);
                let _unpause = Unpause(name);
                while actions_of(name) == paused_with {
                    tokio::time::sleep(PAUSE_POLL).await;
                }
                tracing::info!(failpoint = name, "failpoint: released");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(failpoint = name, error = %e, "failpoint: bad action; ignored");
                Ok(())
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test(start_paused = true)]
        async fn points_fail_pause_and_go_on_as_configured() {
            assert_eq!(hit("t.unset").await, Ok(()));
            configure("t.fail", "1*return").unwrap();
            assert_eq!(
                hit("t.fail").await,
                Err(Injected {
                    name: "t.fail",
                    what: "error".into()
                })
            );
            assert_eq!(hit("t.fail").await, Ok(()), "1* fires once");
            configure("t.lost", "return(lost)").unwrap();
            assert!(hit("t.lost").await.unwrap_err().answer_lost());

            configure("t.pause", "return(pause)").unwrap();
            let waiter = tokio::spawn(hit("t.pause"));
            while list()["t.pause"].paused == 0 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(!waiter.is_finished(), "a paused point waits until configured again");
            configure("t.pause", "off").unwrap();
            assert_eq!(waiter.await.unwrap(), Ok(()));
            assert_eq!(list()["t.pause"].paused, 0);
            assert_eq!(list()["t.pause"].hits, 1);
        }

        #[test]
        fn blocking_tasks_and_unknown_arguments_are_refused() {
            for bad in ["pause", "sleep(10)", "panic", "delay(5)", "return(explode)", "1*pause"] {
                assert!(configure("t.bad", bad).is_err(), "{bad}");
            }
            assert!(configure("no spaces", "off").is_err());
            assert!(configure("t.ok", "50%2*return(sleep:5)->return(crash)").is_ok());
        }
    }
}
