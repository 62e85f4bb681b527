//! The topology picture on the overview page: the data center and each cloud as a box
//! with its servers inside, tunnels from the data center to each cloud, and running moves
//! as dashed arrows. Laid out here as plain numbers; `templates/topology.html` draws it as
//! inline SVG (so every name in it goes through the template's escaping).

use std::collections::HashMap;

use crate::service::Overview;

/// Width of one server chip.
const CHIP_W: u32 = 150;
/// Height of one server chip.
const CHIP_H: u32 = 28;
/// Space between chips.
const GAP: u32 = 8;
/// Chips per row inside a site box.
const COLS: u32 = 2;
/// Inner padding of a site box.
const PAD: u32 = 12;
/// Height of a site box's title area (name + detail line).
const HEADER: u32 = 46;
/// Width of a site box.
const BOX_W: u32 = 2 * PAD + COLS * CHIP_W + (COLS - 1) * GAP;
/// Horizontal room between the data-center column and the cloud column, for tunnels.
const CHANNEL: u32 = 150;
/// Margin around the picture.
const MARGIN: u32 = 10;
/// Vertical space between cloud boxes.
const STACK_GAP: u32 = 20;
/// Height of the legend row under the picture.
const LEGEND_H: u32 = 26;
/// Longest server label drawn in full; longer names are cut (the full name is the tooltip).
const MAX_LABEL_CHARS: usize = 18;

/// What a site box stands for; also its CSS class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SiteKind {
    /// The data center.
    Dc,
    /// An enrolled cloud.
    Cloud,
    /// A location servers report that is neither `dc` nor an enrolled cloud.
    Unknown,
}

impl SiteKind {
    /// The CSS class the template gives the box.
    pub(crate) fn class(self) -> &'static str {
        match self {
            Self::Dc => "site-dc",
            Self::Cloud => "site-cloud",
            Self::Unknown => "site-unknown",
        }
    }
}

/// The whole picture.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Width of the SVG view box.
    pub(crate) width: u32,
    /// Height of the SVG view box.
    pub(crate) height: u32,
    /// The data center first, then clouds, then unknown locations.
    pub(crate) sites: Vec<Site>,
    /// Data center to cloud tunnels.
    pub(crate) tunnels: Vec<Line>,
    /// Running moves, from the server's chip to its destination box.
    pub(crate) moves: Vec<MoveArrow>,
    /// Baseline of the legend row.
    pub(crate) legend_y: u32,
}

/// One box: the data center or a cloud.
#[derive(Debug)]
pub(crate) struct Site {
    /// Left edge.
    pub(crate) x: u32,
    /// Top edge.
    pub(crate) y: u32,
    /// Width.
    pub(crate) w: u32,
    /// Height.
    pub(crate) h: u32,
    /// What it is.
    pub(crate) kind: SiteKind,
    /// Its title.
    pub(crate) title: String,
    /// A detail line (endpoint and acceleration for clouds).
    pub(crate) detail: String,
    /// The servers running there.
    pub(crate) servers: Vec<Chip>,
}

impl Site {
    /// The x of the box's title text.
    pub(crate) fn text_x(&self) -> u32 {
        self.x + PAD
    }

    /// The y of the box's title baseline.
    pub(crate) fn title_y(&self) -> u32 {
        self.y + 20
    }

    /// The y of the box's detail-line baseline.
    pub(crate) fn detail_y(&self) -> u32 {
        self.y + 36
    }

    /// The y of the "no servers" note's baseline.
    pub(crate) fn empty_y(&self) -> u32 {
        self.y + HEADER + 18
    }
}

/// One server inside a box.
#[derive(Debug)]
pub(crate) struct Chip {
    /// Left edge.
    pub(crate) x: u32,
    /// Top edge.
    pub(crate) y: u32,
    /// Width.
    pub(crate) w: u32,
    /// Height.
    pub(crate) h: u32,
    /// The name as drawn (cut to fit).
    pub(crate) label: String,
    /// The full name and address, shown as the tooltip.
    pub(crate) tooltip: String,
    /// The server's state (`running`, `stopped`, `moving`), used as a CSS class suffix.
    pub(crate) state: String,
}

impl Chip {
    /// The x of the label text.
    pub(crate) fn text_x(&self) -> u32 {
        self.x + 20
    }

    /// The y of the label baseline.
    pub(crate) fn text_y(&self) -> u32 {
        self.y + 18
    }

    /// The centre x of the state dot.
    pub(crate) fn dot_x(&self) -> u32 {
        self.x + 10
    }

    /// The centre y of the state dot.
    pub(crate) fn dot_y(&self) -> u32 {
        self.y + self.h / 2
    }
}

/// A straight line.
#[derive(Debug)]
pub(crate) struct Line {
    /// Start x.
    pub(crate) x1: u32,
    /// Start y.
    pub(crate) y1: u32,
    /// End x.
    pub(crate) x2: u32,
    /// End y.
    pub(crate) y2: u32,
}

/// A running move, drawn as a dashed curve.
#[derive(Debug)]
pub(crate) struct MoveArrow {
    /// The SVG path data (`M … C …`).
    pub(crate) path: String,
    /// Tooltip: server, destination, progress.
    pub(crate) tooltip: String,
}

/// Lays out the picture for `overview`.
pub(crate) fn layout(overview: &Overview) -> Topology {
    let mut sites = SiteList::default();
    let dc_detail = match &overview.appliance.lan_iface {
        Some(iface) => format!("LAN {iface}"),
        None => "local network".to_owned(),
    };
    sites.ensure("dc", SiteKind::Dc, "Data center", dc_detail);
    for cloud in &overview.clouds {
        let accel = cloud.accel.as_deref().unwrap_or("emulated");
        let detail = format!("{} · {accel}", cloud.endpoint);
        sites.ensure(&cloud.name, SiteKind::Cloud, &cloud.name, detail);
    }

    // Where each server's chip is: (site, chip) by server name, for the move arrows.
    let mut chip_of: HashMap<&str, (usize, usize)> = HashMap::new();
    for server in &overview.servers {
        // A location that is neither `dc` nor an enrolled cloud still gets a box, so no
        // server is ever missing from the picture.
        let site = sites.ensure(
            &server.location,
            SiteKind::Unknown,
            &server.location,
            "not an enrolled cloud".to_owned(),
        );
        let chips = &mut sites.list[site].servers;
        chip_of.entry(&server.name).or_insert((site, chips.len()));
        let tooltip = match &server.ip {
            Some(ip) => format!("{} · {ip} · {}", server.name, server.state),
            None => format!("{} · {}", server.name, server.state),
        };
        chips.push(Chip {
            x: 0,
            y: 0,
            w: CHIP_W,
            h: CHIP_H,
            label: cut(&server.name),
            tooltip,
            state: server.state.clone(),
        });
    }

    let mut sites = sites.list;
    for site in &mut sites {
        let rows = (site.servers.len() as u32).div_ceil(COLS).max(1);
        site.h = HEADER + rows * CHIP_H + (rows - 1) * GAP + PAD;
    }

    // The data center on the left, every other site stacked on the right.
    let right_x = MARGIN + BOX_W + CHANNEL;
    let mut right_bottom = MARGIN;
    for site in sites.iter_mut().skip(1) {
        if right_bottom > MARGIN {
            right_bottom += STACK_GAP;
        }
        site.x = right_x;
        site.y = right_bottom;
        right_bottom += site.h;
    }
    let right_h = right_bottom - MARGIN;
    let dc_h = sites[0].h;
    sites[0].x = MARGIN;
    sites[0].y = MARGIN + right_h.saturating_sub(dc_h) / 2;

    for site in &mut sites {
        let (sx, sy) = (site.x, site.y);
        for (i, chip) in site.servers.iter_mut().enumerate() {
            let (col, row) = (i as u32 % COLS, i as u32 / COLS);
            chip.x = sx + PAD + col * (CHIP_W + GAP);
            chip.y = sy + HEADER + row * (CHIP_H + GAP);
        }
    }

    let dc = &sites[0];
    let tunnels = sites
        .iter()
        .filter(|s| s.kind == SiteKind::Cloud)
        .map(|cloud| Line {
            x1: dc.x + dc.w,
            y1: dc.y + dc.h / 2,
            x2: cloud.x,
            y2: cloud.y + cloud.h / 2,
        })
        .collect();

    let moves = overview
        .moves
        .iter()
        .filter(|m| m.state == "running")
        .filter_map(|m| {
            let &(from_site, chip) = chip_of.get(m.server.as_str())?;
            let to_site = sites.iter().position(|s| match s.kind {
                SiteKind::Dc => m.to == "dc",
                _ => s.title == m.to,
            })?;
            if to_site == from_site {
                return None;
            }
            let chip = &sites[from_site].servers[chip];
            let to = &sites[to_site];
            let (x2, y2) = (to.x, to.y + to.h / 2);
            let y1 = chip.y + chip.h / 2;
            let path = if to.x > chip.x + chip.w {
                // Rightwards: from the chip's right edge to the box's left edge.
                let x1 = chip.x + chip.w;
                format!("M {x1} {y1} C {} {y1}, {} {y2}, {x2} {y2}", x1 + 60, x2.saturating_sub(60))
            } else {
                // Within the cloud column: bow out to the left of both boxes.
                let x1 = chip.x;
                let bow = x1.min(x2).saturating_sub(70);
                format!("M {x1} {y1} C {bow} {y1}, {bow} {y2}, {x2} {y2}")
            };
            Some(MoveArrow {
                path,
                tooltip: format!("{} → {} · {} ({}%)", m.server, m.to, m.step, m.progress_pct),
            })
        })
        .collect();

    let width = if sites.len() > 1 {
        2 * MARGIN + 2 * BOX_W + CHANNEL
    } else {
        2 * MARGIN + BOX_W
    };
    let drawing_bottom = MARGIN + dc_h.max(right_h);
    Topology {
        width,
        height: drawing_bottom + LEGEND_H + MARGIN,
        sites,
        tunnels,
        moves,
        legend_y: drawing_bottom + LEGEND_H - 6,
    }
}

/// Sites in drawing order, each key (`dc` or a location name) once.
#[derive(Default)]
struct SiteList {
    list: Vec<Site>,
    index: HashMap<String, usize>,
}

impl SiteList {
    /// The index of the site for `key`, adding it if new.
    fn ensure(&mut self, key: &str, kind: SiteKind, title: &str, detail: String) -> usize {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.list.len();
        self.index.insert(key.to_owned(), i);
        self.list.push(Site {
            x: 0,
            y: 0,
            w: BOX_W,
            h: 0,
            kind,
            title: title.to_owned(),
            detail,
            servers: Vec::new(),
        });
        i
    }
}

/// `name` cut to [`MAX_LABEL_CHARS`] characters (not bytes), marked with an ellipsis.
fn cut(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ApplianceInfo, CloudRow, MoveRow, ServerRow};

    fn server(name: &str, location: &str) -> ServerRow {
        ServerRow {
            name: name.into(),
            ip: Some("10.0.0.5".into()),
            mac: None,
            location: location.into(),
            state: "running".into(),
            nic_model: "e1000".into(),
            disk_bus: "ide".into(),
        }
    }

    fn cloud(name: &str) -> CloudRow {
        CloudRow {
            name: name.into(),
            endpoint: format!("https://{name}.example:8443"),
            accel: Some("kvm".into()),
            enrolled_at: "2025-01-01".into(),
        }
    }

    fn overview(servers: Vec<ServerRow>, clouds: Vec<CloudRow>, moves: Vec<MoveRow>) -> Overview {
        Overview {
            servers,
            clouds,
            moves,
            appliance: ApplianceInfo {
                version: "0.1.0".into(),
                lan_iface: Some("eth1".into()),
                ca_fingerprint: None,
                accel: None,
            },
        }
    }

    fn inside(chip: &Chip, site: &Site) -> bool {
        chip.x >= site.x && chip.y >= site.y && chip.x + chip.w <= site.x + site.w && chip.y + chip.h <= site.y + site.h
    }

    #[test]
    fn every_server_sits_inside_its_site_and_sites_do_not_overlap() {
        let servers = (0..7).map(|i| server(&format!("s{i}"), ["dc", "aws", "lab"][i % 3])).collect();
        let t = layout(&overview(servers, vec![cloud("aws"), cloud("gcp")], vec![]));
        let titles: Vec<_> = t.sites.iter().map(|s| s.title.as_str()).collect();
        assert_eq!(titles, ["Data center", "aws", "gcp", "lab"]);
        assert_eq!(t.sites[3].kind, SiteKind::Unknown);
        assert_eq!(t.tunnels.len(), 2, "tunnels go to enrolled clouds only");
        assert_eq!(t.sites.iter().map(|s| s.servers.len()).sum::<usize>(), 7);
        for site in &t.sites {
            assert!(site.x + site.w <= t.width && site.y + site.h <= t.height);
            for chip in &site.servers {
                assert!(inside(chip, site), "{chip:?} outside {}", site.title);
            }
        }
        for (a, b) in t.sites.iter().zip(t.sites.iter().skip(1)).skip(1) {
            assert!(a.y + a.h <= b.y, "{} overlaps {}", a.title, b.title);
        }
    }

    #[test]
    fn no_clouds_draws_the_data_center_alone() {
        let t = layout(&overview(vec![], vec![], vec![]));
        assert_eq!(t.sites.len(), 1);
        assert!(t.tunnels.is_empty());
        assert_eq!(t.width, 2 * MARGIN + BOX_W);
    }

    #[test]
    fn running_move_gets_an_arrow_finished_one_does_not() {
        let mv = |state: &str| MoveRow {
            id: "m1".into(),
            server: "web1".into(),
            to: "aws".into(),
            step: "copy".into(),
            state: state.into(),
            progress_pct: 40,
            started_at: "now".into(),
            events: vec![],
        };
        let o = overview(vec![server("web1", "dc")], vec![cloud("aws")], vec![mv("running")]);
        let t = layout(&o);
        assert_eq!(t.moves.len(), 1);
        assert!(t.moves[0].path.starts_with("M "));
        let o = overview(vec![server("web1", "dc")], vec![cloud("aws")], vec![mv("done")]);
        assert!(layout(&o).moves.is_empty());
    }

    #[test]
    fn long_names_are_cut_on_characters() {
        assert_eq!(cut("short"), "short");
        let long = "ääääääääääääääääääääääää";
        let c = cut(long);
        assert_eq!(c.chars().count(), MAX_LABEL_CHARS);
        assert!(c.ends_with('…'));
    }
}
