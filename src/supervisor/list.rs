//! One page of the device list: which devices a list asks for (a token's reach, online or
//! not, a text to look for), where the page starts and how long it is. Pure: the supervisor
//! hands it its devices in id order, so a page costs one pass and no sort.

use std::sync::Arc;

use memchr::memmem::Finder;

use crate::events::bus::device_matches;

use super::messages::DeviceView;

/// Which devices a list asks for, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    /// Only devices whose id sorts after this one (the last id of the previous page).
    pub after: Option<String>,
    /// At most this many; None: all of them.
    pub limit: Option<usize>,
    /// Only devices online (true) or offline (false).
    pub online: Option<bool>,
    /// Only devices whose id, profile, protocol or remote address contains this text, in
    /// any case: the lower-cased text and its searcher. Set with [`DeviceQuery::with_text`].
    pub text: Option<(String, Finder<'static>)>,
    /// The token's reach: only devices matching one of these patterns; None: every device.
    pub reach: Option<Vec<String>>,
}

/// A device as the list holds it: its view, shared with answers in flight (a page costs a
/// reference count per device, not a copy), and the text `q` searches, lower-cased once
/// when the view is made rather than at every search.
#[derive(Debug, Clone)]
pub struct ListEntry {
    pub view: Arc<DeviceView>,
    search: Box<str>,
}

impl ListEntry {
    pub fn new(view: DeviceView) -> ListEntry {
        let fields = [
            Some(view.id.as_str()),
            view.profile.as_deref(),
            Some(view.protocol.as_str()),
            Some(view.remote_addr.as_str()),
        ];
        // Joined by newlines: a match spans two fields only if the text holds one.
        let search = fields
            .into_iter()
            .flatten()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join("\n")
            .into_boxed_str();
        ListEntry {
            view: Arc::new(view),
            search,
        }
    }

    /// The view to change in place (copied first if an answer in flight still holds it).
    /// Only fields `q` does not search may change this way; a new identity is a new entry.
    pub fn view_mut(&mut self) -> &mut DeviceView {
        Arc::make_mut(&mut self.view)
    }
}

/// A page of devices, with the counts a console needs to say how many there are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevicePage {
    pub devices: Vec<Arc<DeviceView>>,
    /// Devices matching the query, on every page.
    pub total: usize,
    /// Of those, how many are online.
    pub online: usize,
    /// The id to ask `after` for the next page; None on the last page.
    pub next: Option<String>,
}

impl DeviceQuery {
    pub fn with_text(mut self, text: &str) -> DeviceQuery {
        let text = text.trim().to_lowercase();
        self.text = (!text.is_empty()).then(|| {
            let finder = Finder::new(text.as_bytes()).into_owned();
            (text, finder)
        });
        self
    }

    fn matches(&self, entry: &ListEntry) -> bool {
        // The text first: it is in the entry itself, the rest one pointer further.
        if let Some((_, finder)) = &self.text {
            if finder.find(entry.search.as_bytes()).is_none() {
                return false;
            }
        }
        let d = &entry.view;
        if self.online.is_some_and(|online| online != d.online) {
            return false;
        }
        match &self.reach {
            Some(reach) => device_matches(reach, &d.id),
            None => true,
        }
    }

    /// The counts of this query when they are the fleet's own (no reach, no text to look
    /// for): then a page needs no pass over the whole fleet. `known` devices, `online` of them.
    pub fn fleet_counts(&self, known: usize, online: usize) -> Option<(usize, usize)> {
        if self.reach.is_some() || self.text.is_some() {
            return None;
        }
        Some(match self.online {
            None => (known, online),
            Some(true) => (online, online),
            Some(false) => (known.saturating_sub(online), 0),
        })
    }

    /// The page this query asks for, given its counts ([`DeviceQuery::fleet_counts`]) and
    /// the devices after `after`, in id order: walks only as far as the page reaches.
    pub fn page_counted<'a>(
        &self,
        after: impl Iterator<Item = &'a ListEntry>,
        (total, online): (usize, usize),
    ) -> DevicePage {
        let limit = self.limit.unwrap_or(usize::MAX);
        let mut page = DevicePage {
            total,
            online,
            ..DevicePage::default()
        };
        for d in after.filter(|d| self.matches(d)).map(|e| &e.view) {
            if page.devices.len() < limit {
                page.devices.push(d.clone());
            } else {
                page.next = page.devices.last().map(|last| last.id.clone());
                break;
            }
        }
        page
    }

    /// The page of `devices` (which must come in id order) this query asks for, counting
    /// every device it matches on the way.
    pub fn page<'a>(&self, devices: impl Iterator<Item = &'a ListEntry>) -> DevicePage {
        let mut page = DevicePage::default();
        let limit = self.limit.unwrap_or(usize::MAX);
        let mut full = false;
        for d in devices.filter(|d| self.matches(d)).map(|e| &e.view) {
            page.total += 1;
            page.online += usize::from(d.online);
            if self
                .after
                .as_deref()
                .is_some_and(|after| d.id.as_str() <= after)
            {
                continue;
            }
            if page.devices.len() < limit {
                page.devices.push(d.clone());
            } else if !full {
                full = true;
                page.next = page.devices.last().map(|last| last.id.clone());
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn view(id: &str, online: bool, profile: &str) -> DeviceView {
        DeviceView {
            id: id.into(),
            online,
            protocol: "framed".into(),
            profile: Some(profile.into()),
            remote_addr: "10.0.0.7:4000".into(),
            connected_at: Utc::now(),
            last_seen: Utc::now(),
            parent: None,
            unit: None,
        }
    }

    fn fleet() -> Vec<ListEntry> {
        [
            view("1001", true, "meter"),
            view("1001.7", false, "plc"),
            view("1002", true, "Meter"),
            view("2001", false, "meter"),
            view("2002", true, "pump"),
        ]
        .into_iter()
        .map(ListEntry::new)
        .collect()
    }

    fn ids(page: &DevicePage) -> Vec<&str> {
        page.devices.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn no_query_is_every_device() {
        let fleet = fleet();
        let page = DeviceQuery::default().page(fleet.iter());
        assert_eq!(ids(&page), ["1001", "1001.7", "1002", "2001", "2002"]);
        assert_eq!((page.total, page.online, page.next), (5, 3, None));
    }

    #[test]
    fn pages_follow_one_another_without_gap_or_overlap() {
        let fleet = fleet();
        let mut query = DeviceQuery {
            limit: Some(2),
            ..DeviceQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = query.page(fleet.iter());
            assert_eq!(page.total, 5, "the count covers every page");
            seen.extend(ids(&page).into_iter().map(String::from));
            match page.next {
                Some(next) => query.after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["1001", "1001.7", "1002", "2001", "2002"]);
    }

    #[test]
    fn a_page_that_ends_exactly_at_the_last_device_has_no_next() {
        let fleet = fleet();
        let query = DeviceQuery {
            limit: Some(5),
            ..DeviceQuery::default()
        };
        assert_eq!(query.page(fleet.iter()).next, None);
    }

    #[test]
    fn filters_narrow_the_page_and_the_counts() {
        let fleet = fleet();
        let online = DeviceQuery {
            online: Some(true),
            ..DeviceQuery::default()
        };
        let page = online.page(fleet.iter());
        assert_eq!(ids(&page), ["1001", "1002", "2002"]);
        assert_eq!((page.total, page.online), (3, 3));

        let page = DeviceQuery::default()
            .with_text(" METER ")
            .page(fleet.iter());
        assert_eq!(ids(&page), ["1001", "1002", "2001"], "profile, any case");
        let page = DeviceQuery::default().with_text("1001").page(fleet.iter());
        assert_eq!(ids(&page), ["1001", "1001.7"]);
        let page = DeviceQuery::default()
            .with_text("10.0.0.7")
            .page(fleet.iter());
        assert_eq!(page.total, 5, "remote address");
        let page = DeviceQuery::default().with_text("  ").page(fleet.iter());
        assert_eq!(page.total, 5, "a blank text filters nothing");

        let reach = DeviceQuery {
            reach: Some(vec!["2*".into(), "1001".into()]),
            ..DeviceQuery::default()
        };
        assert_eq!(ids(&reach.page(fleet.iter())), ["1001", "2001", "2002"]);
    }

    #[test]
    fn a_page_from_the_fleet_counts_is_the_page_of_a_full_pass() {
        let fleet = fleet();
        let (known, online) = (fleet.len(), fleet.iter().filter(|d| d.view.online).count());
        for state in [None, Some(true), Some(false)] {
            for limit in [None, Some(1), Some(2), Some(5)] {
                for after in [None, Some("1001"), Some("1002"), Some("2002"), Some("0")] {
                    let query = DeviceQuery {
                        after: after.map(String::from),
                        limit,
                        online: state,
                        ..DeviceQuery::default()
                    };
                    let counts = query.fleet_counts(known, online).expect("fleet counts");
                    let rest = fleet
                        .iter()
                        .filter(|d| after.map_or(true, |a| d.view.id.as_str() > a));
                    assert_eq!(
                        query.page_counted(rest, counts),
                        query.page(fleet.iter()),
                        "{query:?}"
                    );
                }
            }
        }
        let text = DeviceQuery::default().with_text("x");
        assert_eq!(text.fleet_counts(known, online), None);
        let reach = DeviceQuery {
            reach: Some(vec!["1*".into()]),
            ..DeviceQuery::default()
        };
        assert_eq!(reach.fleet_counts(known, online), None);
    }

    #[test]
    fn text_outside_ascii_matches_in_any_case() {
        let mut fleet = fleet();
        let mut changed = DeviceView::clone(&fleet[0].view);
        changed.profile = Some("Zähler-Ost".into());
        fleet[0] = ListEntry::new(changed);
        let page = DeviceQuery::default()
            .with_text("ZÄHLER")
            .page(fleet.iter());
        assert_eq!(ids(&page), ["1001"]);
    }
}
