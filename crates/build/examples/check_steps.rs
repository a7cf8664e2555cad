//! Check a build request as the Template SDK sends it (`TemplateBuildStartV2` JSON on stdin)
//! and print its steps as a build would log them, or why it would be refused.
//!
//! `echo '{"fromImage":"python:3.12","steps":[{"type":"RUN","args":["pip install x"]}]}' |
//!  cargo run -p firkin-build --example check_steps`

use firkin_build::{BuildStart, Step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start: BuildStart = serde_json::from_reader(std::io::stdin())?;
    let from = start
        .from_image
        .as_deref()
        .map(|image| format!("image {image}"))
        .or_else(|| {
            start
                .from_template
                .as_deref()
                .map(|t| format!("template {t}"))
        })
        .unwrap_or_else(|| "nothing (refused: fromImage or fromTemplate is required)".to_owned());
    println!("[base] FROM {from}");
    for (index, wire) in start.steps.iter().enumerate() {
        let step = Step::parse(index, wire)?;
        println!(
            "[builder {}/{}] {}",
            index + 1,
            start.steps.len(),
            step.describe()
        );
    }
    Ok(())
}
