//! Checked access to the registry's tables: every index read from shared memory is
//! reduced modulo the table's length, so a corrupt or hostile registry file gives a
//! wrong record, never a panic (a panic would abort the host program).

/// Element `i % N` of `table`.
pub fn at<T, const N: usize>(table: &[T; N], i: usize) -> &T {
    const { assert!(N > 0) };
    #[allow(clippy::indexing_slicing)]
    // `i % N < N` and `N > 0`: always in bounds.
    &table[i % N]
}

/// Element `i % N` of `table`, mutable.
pub fn at_mut<T, const N: usize>(table: &mut [T; N], i: usize) -> &mut T {
    const { assert!(N > 0) };
    #[allow(clippy::indexing_slicing)]
    // `i % N < N` and `N > 0`: always in bounds.
    &mut table[i % N]
}

/// The first `n` elements of `table` (all of them when `n` is larger).
pub fn prefix<T, const N: usize>(table: &[T; N], n: usize) -> &[T] {
    table.get(..n.min(N)).unwrap_or_default()
}

/// A table whose length is known only at run time (read from a registry's header), never
/// empty: the same checked access as [`at`] and [`at_mut`] give fixed-size tables.
pub struct Table<'a, T> {
    items: &'a mut [T],
}

impl<'a, T> Table<'a, T> {
    /// `items` as a table; `None` when it is empty.
    pub fn new(items: &'a mut [T]) -> Option<Table<'a, T>> {
        (!items.is_empty()).then_some(Table { items })
    }

    /// The `len` elements at `ptr` as a table.
    ///
    /// # Safety
    /// `len >= 1`, and `ptr` points to `len` initialised elements that nothing else
    /// reads or writes for `'a`.
    pub unsafe fn from_raw(ptr: *mut T, len: usize) -> Table<'a, T> {
        Table {
            // SAFETY: as the caller promises.
            items: unsafe { std::slice::from_raw_parts_mut(ptr, len) },
        }
    }

    /// Element `i % len`.
    pub fn at(&self, i: usize) -> &T {
        #[allow(clippy::indexing_slicing)]
        // `items` is never empty (see `new`): `i % len < len`.
        &self.items[i % self.items.len()]
    }

    /// Element `i % len`, mutable.
    pub fn at_mut(&mut self, i: usize) -> &mut T {
        let len = self.items.len();
        #[allow(clippy::indexing_slicing)]
        // As in `at`.
        &mut self.items[i % len]
    }

    /// The first `n` elements (all of them when `n` is larger).
    pub fn prefix(&self, n: usize) -> &[T] {
        self.items
            .get(..n.min(self.items.len()))
            .unwrap_or_default()
    }
}

impl<T> std::ops::Deref for Table<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.items
    }
}

impl<T> std::ops::DerefMut for Table<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn tables_wrap_indices_and_are_never_empty() {
        assert!(Table::<u8>::new(&mut []).is_none());
        let mut items = [1, 2, 3];
        let mut t = Table::new(&mut items).unwrap();
        assert_eq!((*t.at(4), t.len()), (2, 3));
        *t.at_mut(usize::MAX) = 9; // usize::MAX % 3 == 0
        assert_eq!(t.prefix(2), &[9, 2]);
        assert_eq!(t.prefix(99).len(), 3);
    }
}
