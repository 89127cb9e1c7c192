//! Name and path validation, and the namespace's size limits.
//!
//! Every check here depends only on the command, never on engine state. The
//! server runs them (through [`crate::Holt::validate_command`]) before
//! proposing, so malformed requests never reach the log, and `apply` repeats
//! them because a log entry is never trusted blindly.
//!
//! Paths are deliberately stricter than POSIX: they must be absolute and may
//! not contain `.` or `..` components. Resolving `..` lexically would be
//! wrong in the presence of symlinks and resolving it physically belongs in
//! the client, so the engine refuses both instead of guessing.

use crate::error::FsError;

/// Longest directory entry name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest absolute path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest symlink target, in bytes.
pub const MAX_SYMLINK_LEN: usize = 4096;
/// Longest extended attribute name, in bytes.
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Largest extended attribute value, in bytes.
pub const MAX_XATTR_VALUE_LEN: usize = 65536;
/// Most symlinks followed while resolving one path before giving up with `Loop`.
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// How much of an offending string an error message quotes. Names can be
/// huge or contain control bytes, so messages show an escaped prefix only.
const PREVIEW_CHARS: usize = 64;

/// An escaped, bounded rendering of user input for error messages.
pub(crate) fn preview(text: &str) -> String {
    let mut shown: String = text.chars().take(PREVIEW_CHARS).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// Checks one directory entry name: non-empty, not `.` or `..`, no `/` or
/// NUL, at most [`MAX_NAME_LEN`] bytes.
pub fn validate_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() {
        return Err(FsError::InvalidArgument("empty name".into()));
    }
    if name == "." || name == ".." {
        return Err(FsError::InvalidArgument(format!(
            "name {name:?} is reserved (`.` and `..` cannot be created or addressed)"
        )));
    }
    if name.contains('/') {
        return Err(FsError::InvalidArgument(format!(
            "name {} contains '/'",
            preview(name)
        )));
    }
    if name.contains('\0') {
        return Err(FsError::InvalidArgument(format!(
            "name {} contains a NUL byte",
            preview(name)
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong(format!(
            "name {} is {} bytes, limit {MAX_NAME_LEN}",
            preview(name),
            name.len()
        )));
    }
    Ok(())
}

/// Splits an absolute path into validated components. `/` gives an empty
/// list; repeated and trailing slashes are ignored; `.` and `..` are rejected.
pub fn split_path(path: &str) -> Result<Vec<&str>, FsError> {
    if !path.starts_with('/') {
        return Err(FsError::InvalidArgument(format!(
            "path {} is not absolute",
            preview(path)
        )));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(FsError::NameTooLong(format!(
            "path is {} bytes, limit {MAX_PATH_LEN}",
            path.len()
        )));
    }
    if path.contains('\0') {
        return Err(FsError::InvalidArgument(format!(
            "path {} contains a NUL byte",
            preview(path)
        )));
    }
    let mut components = Vec::new();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == "." || component == ".." {
            return Err(FsError::InvalidArgument(format!(
                "path {} has a {component:?} component; `.` and `..` are not allowed in paths",
                preview(path)
            )));
        }
        validate_name(component)?;
        components.push(component);
    }
    Ok(components)
}

/// Checks a symlink target: non-empty, at most [`MAX_SYMLINK_LEN`] bytes, no NUL.
/// The target is otherwise free-form (relative, `..`, dangling are all fine).
pub fn validate_symlink_target(target: &str) -> Result<(), FsError> {
    if target.is_empty() {
        return Err(FsError::InvalidArgument("empty symlink target".into()));
    }
    if target.len() > MAX_SYMLINK_LEN {
        return Err(FsError::NameTooLong(format!(
            "symlink target is {} bytes, limit {MAX_SYMLINK_LEN}",
            target.len()
        )));
    }
    if target.contains('\0') {
        return Err(FsError::InvalidArgument(format!(
            "symlink target {} contains a NUL byte",
            preview(target)
        )));
    }
    Ok(())
}

/// Checks an extended attribute name: non-empty, no NUL, at most
/// [`MAX_XATTR_NAME_LEN`] bytes.
pub fn validate_xattr_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() {
        return Err(FsError::InvalidArgument("empty xattr name".into()));
    }
    if name.contains('\0') {
        return Err(FsError::InvalidArgument(format!(
            "xattr name {} contains a NUL byte",
            preview(name)
        )));
    }
    if name.len() > MAX_XATTR_NAME_LEN {
        return Err(FsError::NameTooLong(format!(
            "xattr name {} is {} bytes, limit {MAX_XATTR_NAME_LEN}",
            preview(name),
            name.len()
        )));
    }
    Ok(())
}

/// Checks an extended attribute value: at most [`MAX_XATTR_VALUE_LEN`] bytes.
pub fn validate_xattr_value(value: &[u8]) -> Result<(), FsError> {
    if value.len() > MAX_XATTR_VALUE_LEN {
        return Err(FsError::InvalidArgument(format!(
            "xattr value is {} bytes, limit {MAX_XATTR_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(result: Result<T, FsError>) -> &'static str {
        result.expect_err("expected an error").code()
    }

    #[test]
    fn good_names_pass() {
        for name in [
            "a",
            "file.txt",
            "...",
            ".hidden",
            "a b",
            "ünïcødé",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        assert_eq!(code(validate_name("")), "EINVAL");
        assert_eq!(code(validate_name(".")), "EINVAL");
        assert_eq!(code(validate_name("..")), "EINVAL");
        assert_eq!(code(validate_name("a/b")), "EINVAL");
        assert_eq!(code(validate_name("a\0b")), "EINVAL");
        assert_eq!(code(validate_name(&"x".repeat(256))), "ENAMETOOLONG");
        // The limit is in bytes, not characters.
        assert_eq!(code(validate_name(&"é".repeat(128))), "ENAMETOOLONG");
    }

    #[test]
    fn error_messages_name_the_problem() {
        let message = validate_name("a/b").unwrap_err().to_string();
        assert!(message.contains("'/'"), "{message}");
        let message = validate_name("a\0").unwrap_err().to_string();
        assert!(message.contains("NUL"), "{message}");
        let message = split_path("/a/../b").unwrap_err().to_string();
        assert!(message.contains(".."), "{message}");
    }

    #[test]
    fn split_path_handles_slashes() {
        assert_eq!(split_path("/"), Ok(vec![]));
        assert_eq!(split_path("//"), Ok(vec![]));
        assert_eq!(split_path("/a"), Ok(vec!["a"]));
        assert_eq!(split_path("/a//b/"), Ok(vec!["a", "b"]));
        assert_eq!(split_path("///a///b///c"), Ok(vec!["a", "b", "c"]));
    }

    #[test]
    fn split_path_rejects_bad_paths() {
        assert_eq!(code(split_path("")), "EINVAL");
        assert_eq!(code(split_path("a/b")), "EINVAL");
        assert_eq!(code(split_path("/a/./b")), "EINVAL");
        assert_eq!(code(split_path("/a/..")), "EINVAL");
        assert_eq!(code(split_path("/..")), "EINVAL");
        assert_eq!(code(split_path("/a\0")), "EINVAL");
        assert_eq!(
            code(split_path(&format!("/{}", "x".repeat(256)))),
            "ENAMETOOLONG"
        );
        let long = "/abc".repeat(1025);
        assert!(long.len() > MAX_PATH_LEN);
        assert_eq!(code(split_path(&long)), "ENAMETOOLONG");
        let longest = format!("/{}", "a/".repeat(2047));
        assert!(longest.len() <= MAX_PATH_LEN);
        assert_eq!(split_path(&longest).map(|c| c.len()), Ok(2047));
    }

    #[test]
    fn symlink_targets() {
        assert_eq!(validate_symlink_target("../x"), Ok(()));
        assert_eq!(validate_symlink_target("/abs/./x"), Ok(()));
        assert_eq!(validate_symlink_target(&"x".repeat(4096)), Ok(()));
        assert_eq!(code(validate_symlink_target("")), "EINVAL");
        assert_eq!(code(validate_symlink_target("a\0")), "EINVAL");
        assert_eq!(
            code(validate_symlink_target(&"x".repeat(4097))),
            "ENAMETOOLONG"
        );
    }

    #[test]
    fn xattr_names_and_values() {
        assert_eq!(validate_xattr_name("user.a/b"), Ok(()));
        assert_eq!(code(validate_xattr_name("")), "EINVAL");
        assert_eq!(code(validate_xattr_name("a\0")), "EINVAL");
        assert_eq!(code(validate_xattr_name(&"x".repeat(256))), "ENAMETOOLONG");
        assert_eq!(validate_xattr_value(&vec![0; MAX_XATTR_VALUE_LEN]), Ok(()));
        assert_eq!(
            code(validate_xattr_value(&vec![0; MAX_XATTR_VALUE_LEN + 1])),
            "EINVAL"
        );
    }

    #[test]
    fn preview_is_bounded_and_escaped() {
        let shown = preview(&"\0".repeat(1000));
        assert!(shown.len() < 400, "{shown}");
        assert!(shown.contains("\\0"));
        assert_eq!(preview("ab"), "\"ab\"");
    }
}
