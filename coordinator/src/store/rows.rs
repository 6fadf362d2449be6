//! Rows of the store's tables as domain values, and back: every decode checked, a bad value `Corrupt`.

use std::collections::HashSet;
use std::hash::Hash;

use chrono::{DateTime, Utc};
use flotilla_core::fleet::{Plan, Step};
use flotilla_core::Version;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{StepCount, StoreError};

/// `items` in chunks for multi-row statements, each chunk's size the largest of `sizes` (largest first) that fits
/// what is left, 1 at the least: a few statement shapes only, so each stays prepared on the connection.
pub(super) fn shaped_chunks<'a, T>(mut items: &'a [T], sizes: &'a [usize]) -> impl Iterator<Item = &'a [T]> + 'a {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = sizes.iter().copied().find(|&n| n <= items.len()).unwrap_or(1);
        let (chunk, rest) = items.split_at(n);
        items = rest;
        Some(chunk)
    })
}

pub(super) fn time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time `{text}`: {e}")))
}

pub(super) fn json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("`{text}`: {e}")))
}

pub(super) fn to_json(value: &impl serde::Serialize) -> String {
    // Plain data (maps, strings, numbers) always serializes.
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn get<T>(row: &AnyRow, i: usize) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(i).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn plan_from(row: &AnyRow) -> Result<Plan, StoreError> {
    Ok(Plan {
        id: get(row, 0)?,
        bundle: get(row, 1)?,
        selector: json(&get::<String>(row, 2)?)?,
        goal: json(&get::<String>(row, 3)?)?,
        strategy: json(&get::<String>(row, 4)?)?,
        phase: get::<Option<String>>(row, 5)?.map(|p| json(&p)).transpose()?,
        rollback_of: get(row, 6)?,
        approved_wave: u32::try_from(get::<i64>(row, 7)?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        state: get::<String>(row, 8)?.parse().map_err(StoreError::Corrupt)?,
        created_at: time(&get::<String>(row, 9)?)?,
    })
}

pub(super) const PLAN_COLUMNS: &str =
    "id, bundle, selector, goal, strategy, phase, rollback_of, approved_wave, state, created_at";
pub(super) const STEP_COLUMNS: &str =
    "plan_id, target, wave, state, token, error, goal, version_before, version_after, updated_at";

pub(super) fn step_from(r: &AnyRow) -> Result<Step, StoreError> {
    Ok(Step {
        plan_id: get(r, 0)?,
        target: get(r, 1)?,
        wave: wave_of(r, 2).map_err(corrupt)?,
        state: get::<String>(r, 3)?.parse().map_err(StoreError::Corrupt)?,
        token: get::<Option<i64>>(r, 4)?.map(|t| u64::try_from(t).unwrap_or(0)),
        error: get(r, 5)?,
        goal: get::<Option<String>>(r, 6)?.map(|g| json(&g)).transpose()?,
        before: version(get(r, 7)?)?,
        after: version(get(r, 8)?)?,
        updated_at: time(&get::<String>(r, 9)?)?,
    })
}

/// A wave in column `i`.
pub(super) fn wave_of(r: &AnyRow, i: usize) -> Result<u32, sqlx::Error> {
    u32::try_from(r.try_get::<i64, _>(i)?).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A (wave, state, count) row of the step counts.
pub(super) fn step_count(r: &AnyRow) -> Result<StepCount, StoreError> {
    Ok(StepCount {
        wave: wave_of(r, 0).map_err(corrupt)?,
        state: get::<String>(r, 1)?.parse().map_err(StoreError::Corrupt)?,
        count: u64::try_from(get::<i64>(r, 2)?).map_err(corrupt)?,
    })
}

/// A version column: text of up to 38 digits, or NULL where unknown.
pub(super) fn version(text: Option<String>) -> Result<Option<Version>, StoreError> {
    text.map(|t| t.parse().map_err(|e| StoreError::Corrupt(format!("a version of `{t}`: {e}")))).transpose()
}

/// The first item of each key, in order: one row per key for a statement over many (with two rows for one key, which
/// one an `UPDATE … FROM` or an upsert applies is undefined, or an error).
pub(super) fn first_of_each<'a, T, K: Eq + Hash>(
    items: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|item| seen.insert(key(item))).collect()
}

pub(super) fn token_value(token: Option<u64>) -> Option<i64> {
    token.map(|t| i64::try_from(t).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::{first_of_each, shaped_chunks};

    #[test]
    fn the_first_of_each_key_is_kept_in_order() {
        let items = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)];
        let kept: Vec<u32> = first_of_each(&items, |(t, _)| *t).iter().map(|(_, n)| *n).collect();
        assert_eq!(kept, [1, 2, 4]);
        let mut last: Vec<u32> = first_of_each(items.iter().rev(), |(t, _)| *t).iter().map(|(_, n)| *n).collect();
        last.reverse();
        assert_eq!(last, [3, 4, 5], "the last of each, in order");
    }

    #[test]
    fn chunks_take_the_largest_shape_that_fits_and_cover_everything_once() {
        let items: Vec<u32> = (0..86).collect();
        let sizes: Vec<usize> = shaped_chunks(&items, &[64, 16, 4, 1]).map(<[u32]>::len).collect();
        assert_eq!(sizes, [64, 16, 4, 1, 1]);
        let again: Vec<u32> = shaped_chunks(&items, &[64, 16, 4, 1]).flatten().copied().collect();
        assert_eq!(again, items);
        assert_eq!(shaped_chunks(&items[..3], &[2]).map(<[u32]>::len).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(shaped_chunks::<u32>(&[], &[4, 1]).count(), 0);
    }
}
