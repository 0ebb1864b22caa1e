//! A built-in generator of short TinyStories-like stories, so the Transformer task runs without a
//! download. A small probabilistic grammar: a main character (a child, an animal or two friends,
//! with he/she/they), a beginning ("Once upon a time, there was a little girl named Lily."), 3–6
//! body sentences drawn in story order from seven kinds (description, outing, discovery, problem,
//! help, resolution, lesson), and a happy ending. Typical stories have 40–80 words: regular enough
//! for a small LM to learn, varied enough that it has something to learn.
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const GIRLS: &[&str] = &["Lily", "Mia", "Sue", "Anna", "Emma", "Lucy", "Sara", "Amy", "Zoe", "Kate", "Ella", "Rose"];
const BOYS: &[&str] = &["Tom", "Ben", "Max", "Sam", "Jack", "Leo", "Tim", "Joe", "Finn", "Bob", "Dan", "Ted"];
const PETS: &[&str] = &["Spot", "Fluffy", "Pip", "Coco", "Buddy", "Daisy", "Rusty", "Bella", "Tiny", "Sunny"];
const ANIMALS: &[&str] = &["cat", "dog", "bunny", "bird", "fox", "bear", "duck", "frog", "mouse", "puppy", "kitten", "squirrel"];
const KINDS: &[&str] = &["little", "small", "happy", "kind", "curious", "brave", "shy", "funny", "friendly", "clever"];

/// The pieces a template may name as `{key}`: the first word list whose key matches is drawn from
/// (per use, or once per story for the keys in [`STORY_KEYS`]). Entries may hold placeholders too.
const WORDS: &[(&str, &[&str])] = &[
    (
        "activity",
        &[
            "play with {poss} {toy}",
            "run in the grass",
            "sing songs",
            "draw pictures",
            "jump in the leaves",
            "read books",
            "look at the stars",
            "help {poss} {family}",
            "build with blocks",
            "dance in the sun",
        ],
    ),
    ("place", &["park", "forest", "beach", "garden", "farm", "lake", "zoo", "store", "hill", "river", "playground", "market"]),
    ("home", &["small", "big", "red", "blue", "yellow", "cozy", "little"]),
    ("toy", &["ball", "kite", "doll", "teddy bear", "toy car", "hat", "boat", "drum", "book", "blanket"]),
    ("color", &["red", "blue", "green", "yellow", "pink", "purple", "shiny", "soft", "little", "big"]),
    ("thing", &["flower", "rock", "box", "shell", "leaf", "apple", "feather", "stick", "key", "egg", "star", "cookie"]),
    ("size", &["big", "small", "pretty", "strange", "shiny", "tiny", "round"]),
    ("family", &["mom", "dad", "grandma", "grandpa", "sister", "brother"]),
    ("helper", &["mom", "dad", "friend", "grandma", "teacher", "neighbor"]),
    ("animal2", &["bird", "cat", "dog", "frog", "duck", "bunny", "goat", "turtle"]),
    ("time", &["morning", "day", "evening", "afternoon"]),
    (
        "try",
        &[
            "reach the {thing}, but it was too high",
            "lift the {thing}, but it was too heavy",
            "catch the {thing}, but it was too fast",
            "open the {thing}, but it was too hard",
            "get the {thing}, but it was too far",
        ],
    ),
    ("hole", &["hole", "pond", "bush", "tree", "river", "deep hole"]),
    ("sad", &["sad", "scared", "angry", "worried", "upset", "lonely"]),
    (
        "fix",
        &[
            "found a long stick and got the {thing}",
            "looked everywhere and found the {thing}",
            "built a small bridge",
            "shared the {thing} and played",
            "pulled very hard and got the {thing} out",
            "made a new friend",
        ],
    ),
    ("lesson", &["share", "be kind", "ask for help", "try again", "be brave", "listen to others", "be careful"]),
    (
        "ending",
        &[
            "They were happy.",
            "In the end, they were very happy.",
            "They played together all day and were happy.",
            "They laughed and were happy.",
            "From that day on, they were best friends. They were happy.",
        ],
    ),
];

/// Keys drawn once per story, so a story keeps talking about the same place, thing, toy, helper.
const STORY_KEYS: &[&str] = &["place", "thing", "toy", "family", "helper", "animal2", "home", "color", "size"];

/// The body sentence kinds, in story order; each story uses 3–6 of them, in this order.
const BODY: &[&[&str]] = &[
    // description
    &[
        "{s} loved to {activity}.",
        "{s} lived in a {home} house near the {place}.",
        "{s} had a {color} {toy} that {s} loved very much.",
        "Every day, {s} liked to {activity}.",
    ],
    // outing
    &[
        "One day, {n} went to the {place}.",
        "One {time}, {n} and {poss} {family} went to the {place}.",
        "One day, {s} decided to go to the {place}.",
    ],
    // discovery
    &[
        "There, {s} saw a {size} {thing}.",
        "At the {place}, {s} found a {size} {thing}.",
        "{s} saw a {animal2} sitting under a tree.",
        "{s} saw a {size} {thing} near the {place}.",
    ],
    // problem
    &[
        "{s} wanted to {try}.",
        "Suddenly, the {thing} fell into the {hole}.",
        "Then it started to rain, and {s} {was} {sad}.",
        "But {s} could not find {poss} {toy}, and {s} felt {sad}.",
    ],
    // help
    &[
        "{s} asked {poss} {helper} for help.",
        "{poss} {helper} came and said, \"Do not worry, I will help you.\"",
        "A kind {animal2} saw {obj} and wanted to help.",
        "{n} did not give up.",
    ],
    // resolution
    &["Together, they {fix}.", "{s} tried again and again, and at last {s} did it.", "Soon, the sun came out again.", "Then {s} {fix}."],
    // lesson
    &["{n} learned that it is good to {lesson}.", "{s} smiled and said, \"Thank you!\"", "{n} learned to {lesson}."],
];

/// The main character: how the opening introduces them, and the words that refer to them.
struct Hero {
    intro: String,
    name: String,
    subj: &'static str,
    obj: &'static str,
    poss: &'static str,
    was: &'static str,
}

fn pick<'a, R: Rng + ?Sized>(rng: &mut R, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn hero<R: Rng + ?Sized>(rng: &mut R) -> Hero {
    let she = |intro: String, name: &str| Hero { intro, name: name.into(), subj: "she", obj: "her", poss: "her", was: "was" };
    let he = |intro: String, name: &str| Hero { intro, name: name.into(), subj: "he", obj: "him", poss: "his", was: "was" };
    match rng.random_range(0..10) {
        0..=2 => {
            let name = pick(rng, GIRLS);
            she(format!("a {} girl named {name}", pick(rng, KINDS)), name)
        }
        3..=5 => {
            let name = pick(rng, BOYS);
            he(format!("a {} boy named {name}", pick(rng, KINDS)), name)
        }
        6..=8 => {
            let (name, kind, animal) = (pick(rng, PETS), pick(rng, KINDS), pick(rng, ANIMALS));
            let intro = format!("a {kind} {animal} named {name}");
            if rng.random_bool(0.5) {
                she(intro, name)
            } else {
                he(intro, name)
            }
        }
        _ => {
            let child = |rng: &mut R| {
                let list = if rng.random_bool(0.5) { GIRLS } else { BOYS };
                pick(rng, list)
            };
            let a = child(rng);
            let b = loop {
                let b = child(rng);
                if b != a {
                    break b;
                }
            };
            let name = format!("{a} and {b}");
            Hero { intro: format!("two friends named {name}"), name, subj: "they", obj: "them", poss: "their", was: "were" }
        }
    }
}

/// Replaces each `{key}` of `template`: hero words from `hero`, story-level words from `fixed`,
/// the rest drawn afresh (and filled in turn, since entries may hold placeholders).
fn fill<R: Rng + ?Sized>(template: &str, hero: &Hero, fixed: &[(&str, &str)], rng: &mut R) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("template placeholders are closed");
        let key = &rest[open + 1..close];
        match key {
            "s" => out.push_str(hero.subj),
            "obj" => out.push_str(hero.obj),
            "poss" => out.push_str(hero.poss),
            "was" => out.push_str(hero.was),
            "n" => out.push_str(&hero.name),
            _ => {
                let word = match fixed.iter().find(|(k, _)| *k == key) {
                    Some(&(_, w)) => w,
                    None => pick(rng, words(key)),
                };
                out.push_str(&fill(word, hero, fixed, rng));
            }
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn words(key: &str) -> &'static [&'static str] {
    WORDS.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("no word list for {{{key}}}")).1
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn story<R: Rng + ?Sized>(rng: &mut R) -> String {
    let hero = hero(rng);
    let fixed: Vec<(&str, &str)> = STORY_KEYS.iter().map(|&k| (k, pick(rng, words(k)))).collect();
    let opening = match rng.random_range(0..6) {
        0..=2 => format!("Once upon a time, there {} {}.", hero.was, hero.intro),
        3 => format!("There once {} {}.", hero.was, hero.intro),
        4 => format!("Once there {} {}.", hero.was, hero.intro),
        _ => format!("In a small town, there lived {}.", hero.intro),
    };
    let mut sentences = vec![opening];
    // 3–6 of the body kinds, kept in story order (a partial shuffle picks which).
    let k = rng.random_range(3..=6);
    let mut kinds: Vec<usize> = (0..BODY.len()).collect();
    for i in 0..k {
        let j = rng.random_range(i..kinds.len());
        kinds.swap(i, j);
    }
    kinds.truncate(k);
    kinds.sort_unstable();
    for kind in kinds {
        let template = pick(rng, BODY[kind]);
        sentences.push(capitalize(&fill(template, &hero, &fixed, rng)));
    }
    let ending =
        if rng.random_bool(0.25) { format!("{} {} very happy.", hero.name, hero.was) } else { pick(rng, words("ending")).to_string() };
    sentences.push(ending);
    sentences.join(" ")
}

/// `n` stories, deterministic for `seed` (one ChaCha8 stream; story i does not depend on `n`).
pub fn generate_stories(n: usize, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| story(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_prefix_stable() {
        let a = generate_stories(50, 7);
        assert_eq!(a, generate_stories(50, 7));
        assert_eq!(a[..20], generate_stories(20, 7)[..]);
        assert_ne!(a, generate_stories(50, 8));
    }

    #[test]
    fn stories_are_well_formed_and_varied() {
        let stories = generate_stories(2000, 1);
        let words: Vec<usize> = stories.iter().map(|s| s.split_whitespace().count()).collect();
        let mean = words.iter().sum::<usize>() as f64 / words.len() as f64;
        assert!((35.0..=80.0).contains(&mean), "mean words per story {mean}");
        assert!(*words.iter().min().unwrap() >= 15 && *words.iter().max().unwrap() <= 130, "{words:?}");
        for s in &stories {
            assert!(!s.contains('{') && !s.contains('}') && !s.contains("  "), "{s}");
            assert!(s.ends_with('.') && s.starts_with(char::is_uppercase), "{s}");
            assert!(s.is_ascii(), "{s}");
        }
        let distinct: std::collections::HashSet<&String> = stories.iter().collect();
        assert!(distinct.len() > 1990, "only {} distinct stories of 2000", distinct.len());
        let vocab: std::collections::HashSet<&str> = stories.iter().flat_map(|s| s.split_whitespace()).collect();
        assert!((150..2000).contains(&vocab.len()), "{} distinct words", vocab.len());
    }

    #[test]
    fn plural_heroes_agree() {
        let stories = generate_stories(500, 2);
        assert!(stories.iter().any(|s| s.contains("there were two friends named")));
        for s in &stories {
            assert!(!s.contains("they was") && !s.contains("he were") && !s.contains("she were"), "{s}");
        }
    }
}
