//! What the frame around every page shows: who is logged in and the appliance version.

/// Fields the base template (`templates/base.html`) reads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chrome {
    /// The logged-in user's name, or `None` on the login page and for API-token callers.
    pub(crate) user: Option<String>,
    /// The appliance version, shown only to logged-in users.
    pub(crate) version: Option<String>,
    /// The appliance CA's fingerprint, shown discreetly in the footer to logged-in users.
    pub(crate) ca_fingerprint: Option<String>,
    /// Whether to show the navigation and logout button.
    pub(crate) signed_in: bool,
}
