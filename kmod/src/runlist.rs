//! The list of ballooned runs, kept in the pages themselves.
//!
//! A run is `n` pages with consecutive physical addresses. The list links
//! each run's first page to the next run's and keeps the run's length in
//! that page too (in FreeBSD: the queue linkage `plinks.q` and `pindex`,
//! which the VM leaves to the owner of an unmanaged, object-less page), so
//! the driver needs no memory of its own per page or per run. The list is a
//! stack: the run pushed last comes out first, split if more is asked for
//! than a call may take.
//!
//! Going from a run's first page to its `i`-th is pointer arithmetic in the
//! VM's page array (`&m[i]`) when the run's `vm_page` structures are
//! consecutive, which holds within one `vm_phys` segment, where runs come
//! from; it is checked once per run. A run that straddles segments is
//! listed page by page, each found by its physical address.

/// The page fields and lookups the list uses.
pub trait RunPages {
    /// Handle of one page.
    type Page: Copy + PartialEq;
    /// The run listed after the one starting at `first`.
    fn next(&self, first: Self::Page) -> Option<Self::Page>;
    fn set_next(&mut self, first: Self::Page, next: Option<Self::Page>);
    /// The length of the run starting at `first`.
    fn len(&self, first: Self::Page) -> usize;
    fn set_len(&mut self, first: Self::Page, n: usize);
    /// The page `i` places after `first` in the VM's page array: the run's
    /// `i`-th page when [`contiguous`] holds for the run.
    fn array_nth(&self, first: Self::Page, i: usize) -> Self::Page;
    /// The page at the physical address `i` pages after `first`'s.
    fn phys_nth(&self, first: Self::Page, i: usize) -> Option<Self::Page>;
}

/// True when the `n` pages of the run starting at `first` are consecutive
/// in the page array, so [`RunPages::array_nth`] finds each of them.
pub fn contiguous<S: RunPages>(pages: &S, first: S::Page, n: usize) -> bool {
    n <= 1 || pages.phys_nth(first, n - 1) == Some(pages.array_nth(first, n - 1))
}

/// The pages of the run starting at `first`, `n` of them, in address order
/// (one array step each when the run is contiguous there, one lookup by
/// address each otherwise; a page the lookup cannot find is left out).
pub fn run_pages<S: RunPages>(
    pages: &S,
    first: S::Page,
    n: usize,
) -> impl Iterator<Item = S::Page> + '_ {
    let fast = contiguous(pages, first, n);
    (0..n).filter_map(move |i| {
        if fast {
            Some(pages.array_nth(first, i))
        } else {
            pages.phys_nth(first, i)
        }
    })
}

/// A stack of runs linked through their first pages.
#[derive(Debug)]
pub struct RunList<P> {
    head: Option<P>,
}

impl<P> Default for RunList<P> {
    fn default() -> Self {
        RunList { head: None }
    }
}

impl<P: Copy + PartialEq> RunList<P> {
    pub const fn new() -> Self {
        RunList { head: None }
    }

    /// Lists the run of `n` pages starting at `first` (pages the caller
    /// holds, whose list fields nobody else uses). A run that is not
    /// contiguous in the page array is listed page by page.
    pub fn push<S: RunPages<Page = P>>(&mut self, pages: &mut S, first: P, n: usize) {
        if n == 0 {
            return;
        }
        if contiguous(pages, first, n) {
            self.link(pages, first, n);
            return;
        }
        for i in 0..n {
            if let Some(page) = pages.phys_nth(first, i) {
                self.link(pages, page, 1);
            }
        }
    }

    fn link<S: RunPages<Page = P>>(&mut self, pages: &mut S, first: P, n: usize) {
        pages.set_len(first, n);
        pages.set_next(first, self.head);
        self.head = Some(first);
    }

    /// The listed runs, `(first, n)`, last listed first.
    pub fn runs<'a, S: RunPages<Page = P>>(
        &self,
        pages: &'a S,
    ) -> impl Iterator<Item = (P, usize)> + 'a
    where
        P: 'a,
    {
        let mut at = self.head;
        core::iter::from_fn(move || {
            let first = at?;
            at = pages.next(first);
            Some((first, pages.len(first)))
        })
    }

    /// Takes up to `max` pages off the end of the run listed last:
    /// `(first, n)` with `1 <= n <= max`, or `None` when the list is empty
    /// or `max` is 0. The rest of a split run stays listed.
    pub fn pop<S: RunPages<Page = P>>(&mut self, pages: &mut S, max: usize) -> Option<(P, usize)> {
        let first = self.head?;
        if max == 0 {
            return None;
        }
        let len = pages.len(first);
        if len <= max {
            self.head = pages.next(first);
            return Some((first, len));
        }
        // Listed runs are contiguous in the page array (see `push`).
        pages.set_len(first, len - max);
        Some((pages.array_nth(first, len - max), max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages 0..N with their list fields; the page array breaks (as between
    /// two vm_phys segments) before each page in `breaks`: there the array's
    /// next structure is not the next physical page.
    struct Pages {
        next: Vec<Option<usize>>,
        len: Vec<usize>,
        breaks: Vec<usize>,
    }

    /// Array index of page `p` (physical page number) and back: each break
    /// moves the rest of the pages 1000 slots on in the array.
    fn slot(p: usize, breaks: &[usize]) -> usize {
        p + 1000 * breaks.iter().filter(|&&b| b <= p).count()
    }

    impl Pages {
        fn new(n: usize, breaks: &[usize]) -> Self {
            Pages {
                next: vec![None; n],
                len: vec![0; n],
                breaks: breaks.to_vec(),
            }
        }
        /// The physical page at an array slot, if any.
        fn at_slot(&self, s: usize) -> Option<usize> {
            (0..self.len.len()).find(|&p| slot(p, &self.breaks) == s)
        }
    }

    impl RunPages for Pages {
        type Page = usize;
        fn next(&self, p: usize) -> Option<usize> {
            self.next[p]
        }
        fn set_next(&mut self, p: usize, n: Option<usize>) {
            self.next[p] = n;
        }
        fn len(&self, p: usize) -> usize {
            self.len[p]
        }
        fn set_len(&mut self, p: usize, n: usize) {
            self.len[p] = n;
        }
        fn array_nth(&self, p: usize, i: usize) -> usize {
            // Stands for a vm_page pointer: an array slot, mapped back to a
            // page only when one lives there (usize::MAX: none).
            self.at_slot(slot(p, &self.breaks) + i)
                .unwrap_or(usize::MAX)
        }
        fn phys_nth(&self, p: usize, i: usize) -> Option<usize> {
            (p + i < self.len.len()).then_some(p + i)
        }
    }

    fn drain(list: &mut RunList<usize>, pages: &mut Pages, max: usize) -> Vec<(usize, usize)> {
        core::iter::from_fn(|| list.pop(pages, max)).collect()
    }

    #[test]
    fn runs_come_back_last_first_whole_when_they_fit() {
        let mut pages = Pages::new(64, &[]);
        let mut list = RunList::new();
        assert_eq!(list.pop(&mut pages, 256), None);
        list.push(&mut pages, 0, 16);
        list.push(&mut pages, 32, 1);
        list.push(&mut pages, 40, 8);
        assert_eq!(
            drain(&mut list, &mut pages, 256),
            [(40, 8), (32, 1), (0, 16)]
        );
        assert_eq!(list.pop(&mut pages, 256), None);
    }

    #[test]
    fn a_run_larger_than_asked_for_gives_its_tail() {
        let mut pages = Pages::new(64, &[]);
        let mut list = RunList::new();
        list.push(&mut pages, 8, 16);
        assert_eq!(list.pop(&mut pages, 5), Some((19, 5)));
        assert_eq!(list.pop(&mut pages, 0), None, "max 0 takes nothing");
        assert_eq!(list.pop(&mut pages, 10), Some((9, 10)));
        assert_eq!(list.pop(&mut pages, 10), Some((8, 1)));
        assert_eq!(list.pop(&mut pages, 256), None);
    }

    #[test]
    fn a_run_across_an_array_break_is_listed_page_by_page() {
        // Pages 4..8 straddle the break before page 6.
        let mut pages = Pages::new(16, &[6]);
        assert!(contiguous(&pages, 0, 6));
        assert!(!contiguous(&pages, 4, 4));
        assert!(contiguous(&pages, 6, 4));
        let mut list = RunList::new();
        list.push(&mut pages, 4, 4);
        assert_eq!(
            drain(&mut list, &mut pages, 256),
            [(7, 1), (6, 1), (5, 1), (4, 1)]
        );
    }

    #[test]
    fn run_pages_are_found_either_way() {
        let pages = Pages::new(16, &[6]);
        let all: Vec<usize> = run_pages(&pages, 4, 4).collect();
        assert_eq!(all, [4, 5, 6, 7], "by address across the break");
        let all: Vec<usize> = run_pages(&pages, 8, 4).collect();
        assert_eq!(all, [8, 9, 10, 11], "by array step within a segment");
        assert_eq!(run_pages(&pages, 3, 0).count(), 0);
    }

    #[test]
    fn an_empty_run_is_not_listed() {
        let mut pages = Pages::new(4, &[]);
        let mut list = RunList::new();
        list.push(&mut pages, 1, 0);
        assert_eq!(list.pop(&mut pages, 256), None);
    }
}
