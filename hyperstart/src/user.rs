//! Resolves a process's user spec (`""`, `uid`, `uid:gid`, `name`,
//! `name:group`, mixed) against the container's /etc/passwd and /etc/group,
//! with Docker's rules.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group that lists the user as a member.
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?,
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).copied().unwrap_or(""),
            })
        })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?,
                gid: f.get(2)?.parse().ok()?,
                members: f.get(3).copied().unwrap_or(""),
            })
        })
}

fn numeric(s: &str) -> Option<Result<u32, String>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(s.parse().map_err(|_| format!("id {s} is out of range")))
    } else {
        None
    }
}

/// `passwd`/`group` are the files' contents, `None` when missing (a numeric
/// spec still works then, as in Docker).
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");

    let (uid, entry) = match numeric(user) {
        Some(uid) => {
            let uid = uid?;
            (uid, passwd_entries(passwd).find(|e| e.uid == uid))
        }
        None => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| {
                    format!("unable to find user {user}: no matching entries in passwd file")
                })?;
            (e.uid, Some(e))
        }
    };
    let gid = match grp.filter(|g| !g.is_empty()) {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match numeric(g) {
            Some(gid) => gid?,
            None => {
                group_entries(group)
                    .find(|e| e.name == g)
                    .ok_or_else(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?
                    .gid
            }
        },
    };
    let mut groups = Vec::new();
    if let Some(e) = &entry {
        for g in group_entries(group) {
            if g.members.split(',').any(|m| m.trim() == e.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nginx:x:101:101:nginx user:/var/cache/nginx:/sbin/nologin
broken line
nobody:x:65534:65534:nobody:/:/sbin/nologin
";
    const GROUP: &str = "\
root:x:0:root
bin:x:1:root,bin,daemon
wheel:x:10:root
nginx:x:101:nginx
www-data:x:33:nginx
nogroup:x:65533:
";

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn default_is_root_with_its_groups() {
        assert_eq!(
            resolve("", Some(PASSWD), Some(GROUP)),
            Ok(user(0, 0, &[0, 1, 10], "/root"))
        );
        assert_eq!(
            resolve("root", Some(PASSWD), Some(GROUP)),
            Ok(user(0, 0, &[0, 1, 10], "/root"))
        );
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(
            resolve("nginx", Some(PASSWD), Some(GROUP)),
            Ok(user(101, 101, &[101, 33], "/var/cache/nginx"))
        );
        assert_eq!(
            resolve("101", Some(PASSWD), Some(GROUP)),
            Ok(user(101, 101, &[101, 33], "/var/cache/nginx"))
        );
        assert_eq!(
            resolve("nginx:www-data", Some(PASSWD), Some(GROUP)),
            Ok(user(101, 33, &[101, 33], "/var/cache/nginx"))
        );
        assert_eq!(
            resolve("daemon:0", Some(PASSWD), Some(GROUP)),
            Ok(user(1, 0, &[1], "/usr/sbin"))
        );
        assert_eq!(
            resolve("0:nogroup", Some(PASSWD), Some(GROUP)),
            Ok(user(0, 65533, &[0, 1, 10], "/root"))
        );
    }

    #[test]
    fn unknown_numeric_ids_work_without_entries() {
        assert_eq!(
            resolve("1234", Some(PASSWD), Some(GROUP)),
            Ok(user(1234, 0, &[], "/"))
        );
        assert_eq!(
            resolve("1234:5678", None, None),
            Ok(user(1234, 5678, &[], "/"))
        );
        assert_eq!(resolve("", None, None), Ok(user(0, 0, &[], "/")));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("postgres", Some(PASSWD), Some(GROUP)).unwrap_err(),
            "unable to find user postgres: no matching entries in passwd file"
        );
        assert_eq!(
            resolve("nginx:staff", Some(PASSWD), Some(GROUP)).unwrap_err(),
            "unable to find group staff: no matching entries in group file"
        );
        assert!(resolve("nginx", None, None).is_err());
        assert!(resolve("99999999999", None, None).is_err());
    }
}
