//! Which bundles an agent keeps from its assignment stream, so that a bundle crosses once per session instead of once
//! per target: a 4 MiB bundle assigned to 300 targets was 1.2 GB through the stream, and as many decodes.

use std::collections::VecDeque;

/// The last `capacity` distinct bundle ids a stream's messages named, by most recent use. The coordinator and the
/// agent each run one over the same messages in the same order, so they agree on what the agent keeps without
/// saying so: the coordinator leaves out the bytes of a bundle the agent keeps (`PullAssignmentsRequest.bundles_kept`).
#[derive(Debug)]
pub struct KeptBundles<T> {
    capacity: usize,
    /// Most recently used first.
    entries: VecDeque<(String, T)>,
}

impl<T> KeptBundles<T> {
    pub fn new(capacity: usize) -> Self {
        KeptBundles { capacity, entries: VecDeque::with_capacity(capacity) }
    }

    /// A message names `id` without its bytes: the kept value, now the most recently used; `None` if not kept.
    pub fn touch(&mut self, id: &str) -> Option<&T> {
        let at = self.entries.iter().position(|(kept, _)| kept == id)?;
        let entry = self.entries.remove(at)?;
        self.entries.push_front(entry);
        self.entries.front().map(|(_, value)| value)
    }

    /// A message carries `id` with its bytes: kept as the most recently used (in place of an earlier copy), the
    /// least recently used dropped past capacity.
    pub fn keep(&mut self, id: &str, value: T) {
        if let Some(at) = self.entries.iter().position(|(kept, _)| kept == id) {
            self.entries.remove(at);
        }
        if self.capacity == 0 {
            return;
        }
        self.entries.truncate(self.capacity - 1);
        self.entries.push_front((id.to_string(), value));
    }
}

impl KeptBundles<()> {
    /// The sender's side: whether the message naming `id` may leave its bytes out (the receiver keeps them), after
    /// which the receiver keeps `id` either way.
    pub fn send(&mut self, id: &str) -> bool {
        if self.touch(id).is_some() {
            return true;
        }
        self.keep(id, ());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut sender = KeptBundles::new(2);
        assert!(!sender.send("a"));
        assert!(!sender.send("b"));
        assert!(sender.send("a"), "a is kept");
        assert!(!sender.send("c"), "c is new; b, the least recently used, goes");
        assert!(sender.send("a"));
        assert!(!sender.send("b"), "b was dropped: its bytes go again");
        assert!(!sender.send("c"), "c was dropped for b");
    }

    #[test]
    fn nothing_is_kept_with_no_room() {
        let mut sender = KeptBundles::new(0);
        assert!(!sender.send("a"));
        assert!(!sender.send("a"));
    }

    /// The receiver, told only what the sender's `send` decided, always has what a bundle-less message names: with
    /// the sender's capacity, or a larger one (a coordinator counts at most `BUNDLES_KEPT` of what an agent asks).
    #[test]
    fn the_receiver_keeps_whatever_the_sender_leaves_out() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for (capacity, more) in (0..5).flat_map(|c| (0..3).map(move |m| (c, m))) {
            let (mut sender, mut receiver) = (KeptBundles::new(capacity), KeptBundles::new(capacity + more));
            for message in 0..2_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let id = format!("bundle-{}", state % 7);
                if sender.send(&id) {
                    assert_eq!(receiver.touch(&id), Some(&id), "message {message}: {id} left out but not kept");
                } else {
                    receiver.keep(&id, id.clone());
                }
            }
        }
    }
}
