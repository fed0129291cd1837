#[cfg(test)]
mod tests {
    #[test]
    fn dump() {
        for m in contract::messages() {
            println!("== {} {}", m.subject, m.type_name);
            println!("{}", serde_json::to_string(&m.payload).unwrap());
            if let contract::MessageKind::Request { reply, .. } = &m.kind {
                println!("reply {}", serde_json::to_string(reply).unwrap());
            }
        }
    }
}
