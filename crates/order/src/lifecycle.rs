//! The order lifecycle's rules: which status may follow which. They belong
//! to the order module, which alone changes an order's status; the contract
//! only names the statuses.
//!
//! `pending -> paid -> fulfilled`, or `pending -> failed` (payment declined)
//! or `pending -> cancelled` (`order.cancel`).

use contract::order::OrderStatus::{self, *};

/// Whether the lifecycle allows going from `from` to `to`.
pub fn can_become(from: OrderStatus, to: OrderStatus) -> bool {
    matches!(
        (from, to),
        (Pending, Paid) | (Pending, Failed) | (Pending, Cancelled) | (Paid, Fulfilled)
    )
}

/// No transition leaves a terminal status.
pub fn is_terminal(status: OrderStatus) -> bool {
    matches!(status, Fulfilled | Failed | Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lifecycle_transitions_are_allowed() {
        let all = [Pending, Paid, Fulfilled, Failed, Cancelled];
        let allowed = [
            (Pending, Paid),
            (Pending, Failed),
            (Pending, Cancelled),
            (Paid, Fulfilled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    can_become(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert!(!is_terminal(Pending) && !is_terminal(Paid));
        assert!(is_terminal(Fulfilled) && is_terminal(Failed) && is_terminal(Cancelled));
    }
}
