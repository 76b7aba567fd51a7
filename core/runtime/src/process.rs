//! The container's process from an image's config and the user's options,
//! by Docker's rules: `--entrypoint` replaces the image's Entrypoint and drops
//! its Cmd; command-line arguments replace the image's Cmd; `-e` overrides
//! the image's Env key by key; `-w` and `-u` replace WorkingDir and User.

use hyper_images::ImageConfig;

/// Docker's PATH for images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on top of the image.
#[derive(Debug, Default, Clone)]
pub struct Overrides<'a> {
    /// `Some(vec![])` is `--entrypoint ""`: no entrypoint at all.
    pub entrypoint: Option<&'a [String]>,
    pub args: &'a [String],
    pub env: &'a [String],
    pub workdir: Option<&'a str>,
    pub user: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// `None` when neither the image nor the user gives a command.
pub fn resolve(image: &ImageConfig, user: &Overrides<'_>) -> Option<Process> {
    let (entrypoint, cmd): (&[String], &[String]) = match user.entrypoint {
        Some(ep) => (ep, user.args),
        None => {
            let ep = image.entrypoint.as_deref().unwrap_or_default();
            if user.args.is_empty() {
                (ep, image.cmd.as_deref().unwrap_or_default())
            } else {
                (ep, user.args)
            }
        }
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return None;
    }
    let mut env = merge_env(&image.env, user.env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Some(Process {
        args,
        env,
        workdir: user
            .workdir
            .map(str::to_string)
            .or_else(|| non_empty(&image.working_dir)),
        user: user
            .user
            .map(str::to_string)
            .or_else(|| non_empty(&image.user)),
    })
}

/// `base` with each `KEY=…` of `overrides` replacing the same key, new keys
/// appended in order.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut env: Vec<String> = base.to_vec();
    for o in overrides {
        let k = key(o);
        match env.iter_mut().find(|e| key(e) == k) {
            Some(slot) => slot.clone_from(o),
            None => env.push(o.clone()),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            env: v(&["PATH=/bin", "A=1"]),
            cmd: Some(v(&["-c", "echo hi"])),
            entrypoint: Some(v(&["/bin/sh"])),
            working_dir: Some("/srv".into()),
            user: Some("nobody".into()),
        }
    }

    #[test]
    fn image_defaults_apply_without_overrides() {
        let p = resolve(&image(), &Overrides::default()).unwrap();
        assert_eq!(p.args, v(&["/bin/sh", "-c", "echo hi"]));
        assert_eq!(p.env, v(&["PATH=/bin", "A=1"]));
        assert_eq!(p.workdir.as_deref(), Some("/srv"));
        assert_eq!(p.user.as_deref(), Some("nobody"));
    }

    #[test]
    fn arguments_replace_cmd_but_keep_the_entrypoint() {
        let args = v(&["-c", "exit 3"]);
        let p = resolve(
            &image(),
            &Overrides {
                args: &args,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.args, v(&["/bin/sh", "-c", "exit 3"]));
    }

    #[test]
    fn entrypoint_override_drops_the_image_cmd() {
        let ep = v(&["/bin/true"]);
        let p = resolve(
            &image(),
            &Overrides {
                entrypoint: Some(&ep),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.args, v(&["/bin/true"]));
        let empty: Vec<String> = Vec::new();
        let args = v(&["ls", "/"]);
        let p = resolve(
            &image(),
            &Overrides {
                entrypoint: Some(&empty),
                args: &args,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.args, v(&["ls", "/"]));
    }

    #[test]
    fn no_command_anywhere_is_none() {
        let bare = ImageConfig::default();
        assert!(resolve(&bare, &Overrides::default()).is_none());
        let empty: Vec<String> = Vec::new();
        assert!(resolve(
            &image(),
            &Overrides {
                entrypoint: Some(&empty),
                ..Default::default()
            }
        )
        .is_none());
    }

    #[test]
    fn env_overrides_by_key_and_path_defaults() {
        let env = v(&["A=2", "B=3"]);
        let p = resolve(
            &image(),
            &Overrides {
                env: &env,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.env, v(&["PATH=/bin", "A=2", "B=3"]));
        let bare = ImageConfig {
            cmd: Some(v(&["sh"])),
            ..Default::default()
        };
        let p = resolve(&bare, &Overrides::default()).unwrap();
        assert_eq!(p.env, v(&[DEFAULT_PATH]));
        assert_eq!(p.workdir, None);
        assert_eq!(p.user, None);
    }

    #[test]
    fn user_and_workdir_flags_win() {
        let p = resolve(
            &image(),
            &Overrides {
                workdir: Some("/tmp"),
                user: Some("0:0"),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.workdir.as_deref(), Some("/tmp"));
        assert_eq!(p.user.as_deref(), Some("0:0"));
    }
}
