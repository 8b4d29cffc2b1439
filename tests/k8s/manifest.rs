//! The rendered manifests (`kubectl kustomize`), read the way the API server and the kubelet
//! read them: objects by kind and name, a pod template's containers with their command,
//! arguments, environment (values, the downward API's fields and resource limits), ports,
//! probes, volume mounts and security settings (the pod's, overridden by the container's).
//!
//! `$(VAR)` references in env values, commands and arguments are expanded as the kubelet
//! expands them (a port of Kubernetes' `third_party/forked/golang/expansion`: `$$` is `$`,
//! an undefined `$(NAME)` stays as written, which is why a shell's `$(cmd)` and `$((n+1))`
//! reach the shell unchanged). Anything the emulation does not implement (an env source,
//! a probe kind) panics with its name, so a manifest change the test cannot follow fails
//! the test instead of being run differently from how Kubernetes would run it.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// Every object of one `kubectl kustomize` output.
pub struct Rendered {
    pub objects: Vec<Value>,
}

impl Rendered {
    pub fn render(dir: &Path) -> Rendered {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubectl kustomize {}: {e} (kubectl renders deploy/k8s)",
                    dir.display()
                )
            });
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
        let objects = yaml_serde::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).expect("kustomize output is YAML"))
            .collect();
        Rendered { objects }
    }

    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The object of `kind` whose name is `name` with kustomize's hash suffix, or `name`.
    pub fn generated(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"].as_str().is_some_and(|n| {
                        n == name || n.rsplit_once('-').is_some_and(|(b, _)| b == name)
                    })
            })
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
    }
}

pub fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v}"))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| str_of(s, "a list item").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A Kubernetes CPU quantity ("2", "500m") in CPUs.
pub fn cpus(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().expect("CPU millis") / 1000.0,
        None => q.parse().expect("CPU quantity"),
    }
}

/// Who the pod is, for the downward API.
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub ip: String,
}

/// An HTTP GET probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: String,
    pub port: u16,
    pub timeout_s: u64,
}

#[derive(Debug, Clone)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Seccomp {
    /// The runtime's own default; the emulation has none to apply.
    RuntimeDefault,
    Unconfined,
    /// A file relative to the kubelet's seccomp directory.
    Localhost(String),
}

#[derive(Debug, Clone)]
pub struct Security {
    pub run_as_user: u32,
    pub run_as_group: u32,
    /// The pod's fsGroup, also a supplementary group of every container.
    pub fs_group: Option<u32>,
    pub read_only_root: bool,
    pub no_new_privs: bool,
    pub drop_all_caps: bool,
    pub seccomp: Seccomp,
}

/// One container of a pod template.
pub struct Container<'a> {
    pub spec: &'a Value,
    pub pod: &'a Value,
}

impl<'a> Container<'a> {
    pub fn name(&self) -> &str {
        str_of(&self.spec["name"], "container name")
    }

    pub fn image(&self) -> &str {
        str_of(&self.spec["image"], "container image")
    }

    /// command + args with the container's variables expanded, as the runtime execs them.
    pub fn argv(&self, env: &[(String, String)]) -> Vec<String> {
        let mut argv = strings(&self.spec["command"]);
        argv.extend(strings(&self.spec["args"]));
        assert!(
            !argv.is_empty(),
            "{}: no command (the image's entrypoint is not emulated)",
            self.name()
        );
        argv.iter().map(|a| expand(a, env)).collect()
    }

    pub fn env(&self, who: &PodIdentity) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in self.spec["env"].as_array().into_iter().flatten() {
            let name = str_of(&e["name"], "env name").to_owned();
            let value = if let Some(v) = e.get("value") {
                str_of(v, "env value").to_owned()
            } else if let Some(f) = e["valueFrom"].get("fieldRef") {
                match str_of(&f["fieldPath"], "fieldPath") {
                    "metadata.name" => who.name.clone(),
                    "metadata.namespace" => who.namespace.clone(),
                    "status.podIP" => who.ip.clone(),
                    other => panic!("env {name}: fieldRef {other} is not emulated"),
                }
            } else if let Some(r) = e["valueFrom"].get("resourceFieldRef") {
                let resource = str_of(&r["resource"], "resourceFieldRef.resource");
                let divisor = r.get("divisor").map_or("1", |d| str_of(d, "divisor"));
                let target = r
                    .get("containerName")
                    .map_or(self.name(), |c| str_of(c, "containerName"));
                let c = self.sibling(target);
                let (section, res) = resource
                    .split_once('.')
                    .expect("limits.cpu or requests.cpu");
                assert_eq!(
                    res, "cpu",
                    "env {name}: only CPU resourceFieldRefs are emulated"
                );
                let q = str_of(
                    &c["resources"][section]["cpu"],
                    "the CPU quantity referred to",
                );
                // The downward API rounds up to a whole number of divisors.
                ((cpus(q) / cpus(divisor)).ceil() as u64).to_string()
            } else {
                panic!("env {name}: this source is not emulated: {e}")
            };
            let value = expand(&value, &out);
            out.push((name, value));
        }
        out
    }

    fn sibling(&self, name: &str) -> &'a Value {
        self.pod["containers"]
            .as_array()
            .into_iter()
            .chain(self.pod["initContainers"].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name} in the pod"))
    }

    pub fn port(&self, name_or_number: &Value) -> u16 {
        if let Some(n) = name_or_number.as_u64() {
            return n as u16;
        }
        let name = str_of(name_or_number, "port");
        self.spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no port named {name}", self.name())) as u16
    }

    pub fn probe(&self, which: &str) -> Option<Probe> {
        let p = self.spec.get(which)?;
        let get = p
            .get("httpGet")
            .unwrap_or_else(|| panic!("{which}: only httpGet probes are emulated"));
        let n = |k: &str, default: u64| p.get(k).and_then(|v| v.as_u64()).unwrap_or(default);
        Some(Probe {
            path: str_of(&get["path"], "probe path").to_owned(),
            port: self.port(&get["port"]),
            timeout_s: n("timeoutSeconds", 1),
        })
    }

    pub fn mounts(&self) -> Vec<VolumeMount> {
        self.spec["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                assert!(
                    m.get("subPath").is_none(),
                    "subPath mounts are not emulated"
                );
                VolumeMount {
                    volume: str_of(&m["name"], "volumeMount name").to_owned(),
                    path: str_of(&m["mountPath"], "mountPath").to_owned(),
                    read_only: m["readOnly"].as_bool().unwrap_or(false),
                }
            })
            .collect()
    }

    /// The pod's securityContext with the container's over it.
    pub fn security(&self) -> Security {
        let pod = &self.pod["securityContext"];
        let own = &self.spec["securityContext"];
        let pick = |k: &str| own.get(k).or_else(|| pod.get(k));
        let seccomp = match pick("seccompProfile") {
            None => Seccomp::Unconfined,
            Some(s) => match str_of(&s["type"], "seccompProfile.type") {
                "RuntimeDefault" => Seccomp::RuntimeDefault,
                "Unconfined" => Seccomp::Unconfined,
                "Localhost" => Seccomp::Localhost(
                    str_of(&s["localhostProfile"], "localhostProfile").to_owned(),
                ),
                other => panic!("seccompProfile {other} is not emulated"),
            },
        };
        let run_as_user = pick("runAsUser")
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| {
                panic!(
                    "{}: no runAsUser (the image's USER is not emulated)",
                    self.name()
                )
            }) as u32;
        if pick("runAsNonRoot").and_then(|v| v.as_bool()) == Some(true) {
            assert_ne!(run_as_user, 0, "{}: runAsNonRoot with user 0", self.name());
        }
        let drops = strings(&own["capabilities"]["drop"]);
        assert!(
            own["capabilities"].get("add").is_none(),
            "{}: added capabilities are not emulated",
            self.name()
        );
        Security {
            run_as_user,
            run_as_group: pick("runAsGroup").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
            fs_group: pod
                .get("fsGroup")
                .and_then(|v| v.as_u64())
                .map(|g| g as u32),
            read_only_root: own["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            no_new_privs: own["allowPrivilegeEscalation"].as_bool() == Some(false),
            drop_all_caps: drops.iter().any(|d| d == "ALL"),
            seccomp,
        }
    }
}

/// The containers of a pod template, init containers first.
pub fn containers<'a>(pod: &'a Value, key: &str) -> Vec<Container<'a>> {
    pod[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|spec| Container { spec, pod })
        .collect()
}

/// The kubelet's expansion of `$(NAME)` with the variables defined so far.
pub fn expand(input: &str, vars: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let b = input.as_bytes();
    let mut out = String::new();
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < b.len() {
        if b[cursor] == b'$' && cursor + 1 < b.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match b[cursor + 1] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest[1..].find(')') {
                    Some(close) => {
                        let name = &rest[1..1 + close];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&format!("$({name})")),
                        }
                        close + 2
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // `$` and the next character, kept (a multi-byte character whole).
                    let next = rest.chars().next().map_or(1, char::len_utf8);
                    out.push('$');
                    out.push_str(&rest[..next]);
                    next
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

#[test]
fn expansion_is_the_kubelets() {
    let vars = [("A".to_owned(), "x".to_owned())];
    for (input, want) in [
        ("$(A)", "x"),
        ("$(B)", "$(B)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("a$", "a$"),
        ("$((i + 1))", "$((i + 1))"),
        ("$(dirname \"$t\")", "$(dirname \"$t\")"),
        ("${HOME##*-} $A", "${HOME##*-} $A"),
        ("$(A", "$(A"),
        ("p$(A)q$(A)", "pxqx"),
    ] {
        assert_eq!(expand(input, &vars), want, "{input}");
    }
}
