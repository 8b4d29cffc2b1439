//! The `settings!` macro that turns the table in `config/mod.rs` into the flags, the
//! environment and file lookups, the merge and the [`Settings`](super::Settings) struct, and
//! the [`Resolver`] that the generated merge calls for each setting.
//!
//! Naming: a setting's field `data_dir` is the flag `--data-dir`, the variable
//! `PROGLOG_DATA_DIR` and the file key `data-dir` ([`key`], [`env_var`]).

use std::path::PathBuf;

use clap::{Arg, ArgAction};

use super::file::{ConfigFile, FileValue};
use super::value::{DefaultValue, Land, SettingValue, Unset};
use super::ConfigError;

/// The environment, as a lookup (tests pass their own).
pub type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A setting's flag name and config-file key.
pub fn key(field: &str) -> String {
    field.replace('_', "-")
}

/// A setting's environment variable.
pub fn env_var(field: &str) -> String {
    format!("PROGLOG_{}", field.to_ascii_uppercase())
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
}

impl Origin {
    fn describe(&self, field: &str) -> String {
        match self {
            Origin::Flag => format!("flag --{}", key(field)),
            Origin::Env(var) => format!("environment variable {var}"),
            Origin::File(path) => format!("config file {}", path.display()),
            Origin::Default => "the built-in default".to_owned(),
        }
    }
}

/// A setting's value as it is shown on the start-up line, and where it came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub key: String,
    pub shown: String,
    pub origin: Origin,
}

/// The merge of one set of flags with the environment and the config file.
pub struct Resolver<'a> {
    pub env: &'a Env<'a>,
    file: Option<ConfigFile>,
    /// Every setting that has a value, in table order.
    pub effective: Vec<Effective>,
}

impl<'a> Resolver<'a> {
    /// Loads the config file (if any) and refuses keys that are not `fields`' keys.
    pub fn new(
        config_file: Option<&PathBuf>,
        env: &'a Env<'a>,
        fields: &[&str],
    ) -> Result<Resolver<'a>, ConfigError> {
        let file = config_file.map(|p| ConfigFile::load(p)).transpose()?;
        if let Some(f) = &file {
            f.check_keys(&fields.iter().map(|f| key(f)).collect::<Vec<_>>())?;
        }
        Ok(Resolver {
            env,
            file,
            effective: Vec::new(),
        })
    }

    /// flag > environment > config file: the value that wins and its origin, or `None` when
    /// no source sets it. A bad value in the file is an error even where a flag or the
    /// environment overrides it: the file is broken, and would be used as soon as the
    /// override goes.
    pub fn pick<V: SettingValue>(
        &self,
        field: &'static str,
        flag: &Option<V>,
    ) -> Result<Option<(V, Origin)>, ConfigError> {
        let from_file = self.file_value::<V>(field)?;
        if let Some(v) = flag {
            return Ok(Some((v.clone(), Origin::Flag)));
        }
        let var = env_var(field);
        if let Some(text) = (self.env)(&var) {
            let origin = Origin::Env(var);
            return parse(field, &text, &origin).map(|v| Some((v, origin)));
        }
        Ok(from_file)
    }

    fn file_value<V: SettingValue>(
        &self,
        field: &'static str,
    ) -> Result<Option<(V, Origin)>, ConfigError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let origin = Origin::File(file.path.clone());
        match file.get(&key(field)) {
            None | Some(FileValue::Empty) => Ok(None),
            Some(FileValue::Text(text)) => parse(field, text, &origin).map(|v| Some((v, origin))),
            Some(FileValue::List(items)) if V::LIST => {
                parse(field, &items.join(","), &origin).map(|v| Some((v, origin)))
            }
            Some(FileValue::List(items)) => Err(invalid(
                field,
                format!("[{}]", items.join(", ")),
                &origin,
                "a list, where one value is expected".to_owned(),
            )),
        }
    }

    /// The table's default for `field` (a value, or text parsed like a flag's).
    pub fn default_value<V: SettingValue, D: DefaultValue<V>>(
        &self,
        field: &'static str,
        default: D,
    ) -> Result<V, ConfigError> {
        default
            .into_value()
            .map_err(|reason| invalid(field, "(built in)".to_owned(), &Origin::Default, reason))
    }

    /// Turns the winning value into what `Settings` holds, and records it for the start-up
    /// line and for [`check`](Self::check)'s errors.
    pub fn settle<V: SettingValue + Land<F>, F>(
        &mut self,
        field: &'static str,
        value: V,
        origin: Origin,
    ) -> Result<F, ConfigError> {
        let shown = value.show();
        let landed = value
            .land()
            .map_err(|reason| invalid(field, shown.clone(), &origin, reason))?;
        self.effective.push(Effective {
            key: key(field),
            shown,
            origin,
        });
        Ok(landed)
    }

    /// A setting's own validation; its `Err` is reported with the value and its origin.
    pub fn check<F>(
        &self,
        field: &'static str,
        value: &F,
        check: impl FnOnce(&F) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        check(value).map_err(|reason| {
            let k = key(field);
            match self.effective.iter().rev().find(|e| e.key == k) {
                Some(e) => invalid(field, e.shown.clone(), &e.origin, reason),
                None => invalid(field, "(unset)".to_owned(), &Origin::Default, reason),
            }
        })
    }
}

/// Refuses a setting whose feature this build does not have, unless it is unset (or set to
/// its "nothing": false, empty).
#[allow(dead_code)] // for a setting accepted before its feature exists
pub fn refuse_if_set<F: Unset + PartialEq>(
    field: &'static str,
    value: &F,
    feature: &'static str,
) -> Result<(), ConfigError> {
    if *value == F::unset() {
        return Ok(());
    }
    Err(ConfigError::NotImplemented {
        key: key(field),
        feature,
    })
}

/// Runs a computed default (one that depends on the environment or on settings above it).
pub fn computed<V>(env: &Env<'_>, f: impl FnOnce(&Env<'_>) -> V) -> V {
    f(env)
}

fn parse<V: SettingValue>(field: &str, text: &str, origin: &Origin) -> Result<V, ConfigError> {
    V::parse(text).map_err(|reason| invalid(field, text.to_owned(), origin, reason))
}

fn invalid(field: &str, value: String, origin: &Origin, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key(field),
        value,
        origin: origin.describe(field),
        reason,
    }
}

/// The flag of one setting. The help is its doc comment, then its default.
pub fn arg<V: SettingValue>(
    field: &'static str,
    value_name: &'static str,
    doc: &[&str],
    default: Option<String>,
) -> Arg {
    let mut help = doc
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(d) = default {
        help.push_str(&format!(" [default: {d}]"));
    }
    let arg = Arg::new(field)
        .long(key(field))
        .value_name(value_name)
        .help(help)
        .value_parser(V::clap_parser())
        .action(if V::LIST {
            ArgAction::Append
        } else {
            ArgAction::Set
        });
    match V::FLAG_ALONE {
        Some(v) => arg.num_args(0..=1).default_missing_value(v),
        None => arg,
    }
}

/// Declares every server setting once; see the module doc of `config` for the table's form.
///
/// Generates `ServeArgs` (the flags, with clap's `Args`), `Settings` (one field per setting,
/// then the derived ones) and `Settings::resolve_with` (the merge, each setting's checks, the
/// derived fields, then `Settings::validate`).
macro_rules! settings {
    (
        settings {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $value:ty $(=> $landed:ty)?, $value_name:literal,
                    default($($default:tt)*) $(, $clause:ident($($clause_arg:tt)*))* ;
            )*
        }
        derived {
            $(
                $(#[doc = $ddoc:literal])*
                $dfield:ident: $dty:ty = $dexpr:expr;
            )*
        }
    ) => {
        /// Server flags. All optional here so that an unset flag can fall back to the
        /// environment, then to the config file, then to the default named in its help.
        #[derive(Debug, Clone, Default)]
        pub struct ServeArgs {
            /// YAML (or .toml) file whose keys are these flag names
            pub config_file: Option<::std::path::PathBuf>,
            $(
                $(#[doc = $doc])*
                pub $field: Option<$value>,
            )*
        }

        impl clap::Args for ServeArgs {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                cmd.arg(
                    clap::Arg::new("config_file")
                        .long("config-file")
                        .value_name("PATH")
                        .help("YAML (or .toml) file whose keys are these flag names [env: PROGLOG_CONFIG_FILE]")
                        .value_parser(clap::value_parser!(::std::path::PathBuf))
                        .action(clap::ArgAction::Set),
                )
                $(
                    .arg($crate::config::declare::arg::<$value>(
                        stringify!($field),
                        $value_name,
                        &[$($doc),*],
                        $crate::config::declare::settings!(@shown $value; $($default)*),
                    ))
                )*
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }

        impl clap::FromArgMatches for ServeArgs {
            fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
                let mut args = ServeArgs::default();
                args.update_from_arg_matches(m)?;
                Ok(args)
            }

            fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
                use $crate::config::value::SettingValue as _;
                if let Some(p) = m.get_one::<::std::path::PathBuf>("config_file") {
                    self.config_file = Some(p.clone());
                }
                $(
                    if let Some(v) = <$value>::from_matches(m, stringify!($field)) {
                        self.$field = Some(v);
                    }
                )*
                Ok(())
            }
        }

        /// The effective settings of a server, every default filled in.
        // Every setting has its field, also those read only through another (rpc-port through
        // listen, the TLS and ACL files through tls and acl) and those refused for now.
        #[allow(dead_code)]
        #[derive(Debug, Clone)]
        pub struct Settings {
            pub config_file: Option<::std::path::PathBuf>,
            $(
                $(#[doc = $doc])*
                pub $field: $crate::config::declare::settings!(@landed $value $(=> $landed)?),
            )*
            $(
                $(#[doc = $ddoc])*
                pub $dfield: $dty,
            )*
            /// Every setting that has a value, in table order, for the start-up line.
            effective: Vec<$crate::config::declare::Effective>,
        }

        impl Settings {
            /// The fields of the table, in order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// [`resolve`](Self::resolve) with an explicit environment, for tests.
            pub fn resolve_with(
                args: &ServeArgs,
                env: &$crate::config::declare::Env<'_>,
            ) -> Result<Settings, $crate::config::ConfigError> {
                use $crate::config::declare::{Origin, Resolver};
                let config_file = args.config_file.clone().or_else(|| {
                    env(&$crate::config::declare::env_var("config_file"))
                        .map(::std::path::PathBuf::from)
                        .filter(|p| !p.as_os_str().is_empty())
                });
                let mut r = Resolver::new(config_file.as_ref(), env, Self::FIELDS)?;
                $(
                    let $field: $crate::config::declare::settings!(@landed $value $(=> $landed)?) =
                        match r.pick::<$value>(stringify!($field), &args.$field)? {
                            Some((v, origin)) => r.settle(stringify!($field), v, origin)?,
                            None => $crate::config::declare::settings!(
                                @default r, $field, $value; $($default)*
                            ),
                        };
                    $(
                        $crate::config::declare::settings!(
                            @clause r, $field; $clause($($clause_arg)*)
                        );
                    )*
                )*
                $(
                    let $dfield: $dty = $dexpr;
                )*
                let s = Settings {
                    config_file,
                    $($field,)*
                    $($dfield,)*
                    effective: r.effective,
                };
                s.validate()?;
                Ok(s)
            }
        }
    };

    // The type a setting has in `Settings`.
    (@landed $value:ty => $landed:ty) => { $landed };
    (@landed $value:ty) => { $value };

    // A setting's value when no source sets it.
    (@default $r:ident, $field:ident, $value:ty; unset) => {
        $crate::config::value::Unset::unset()
    };
    (@default $r:ident, $field:ident, $value:ty; $computed:expr, $shown:literal) => {{
        let v: $value = $crate::config::declare::computed($r.env, $computed);
        $r.settle(stringify!($field), v, Origin::Default)?
    }};
    (@default $r:ident, $field:ident, $value:ty; $default:expr) => {{
        let v = $r.default_value::<$value, _>(stringify!($field), $default)?;
        $r.settle(stringify!($field), v, Origin::Default)?
    }};

    // The default as `--help` shows it.
    (@shown $value:ty; unset) => { None };
    (@shown $value:ty; $computed:expr, $shown:literal) => { Some($shown.to_owned()) };
    (@shown $value:ty; $default:expr) => {
        $crate::config::value::DefaultValue::<$value>::into_value($default)
            .ok()
            .map(|v: $value| $crate::config::value::SettingValue::show(&v))
    };

    // A setting's own checks, run once it has its value.
    (@clause $r:ident, $field:ident; check($check:expr)) => {
        $r.check(stringify!($field), &$field, $check)?
    };
    (@clause $r:ident, $field:ident; refused($feature:expr)) => {
        $crate::config::declare::refuse_if_set(stringify!($field), &$field, $feature)?
    };
}

pub(crate) use settings;
