"""Paraphrase pairs and distinct prompts written for quicktune's semantic duplicate check.

``PARAPHRASES``: each pair says the same thing in other words (few shared words).
``REWORDED``: the same question with its words reordered or a few swapped, the way
templated or augmented data repeats itself; the character 5-gram check misses most.
``DISTINCT`` holds prompts on the same topics that ask something else: a checker that
pairs them is reporting false positives. Used by tests/data/test_semantic.py and
bench/semantic.py.
"""

from __future__ import annotations

PARAPHRASES: list[tuple[str, str]] = [
    ("How do I get rust off a cast iron pan?", "What's the best way to remove rust from my cast-iron skillet?"),
    ("Book a meeting with Sara next Tuesday at 3pm", "Set up a call with Sara on Tuesday of next week, 15:00"),
    ("Why does my bread come out so dense?", "What makes homemade loaves turn out heavy and compact?"),
    ("Can you recommend a good book about the Roman Empire?", "Suggest some reading on the history of ancient Rome."),
    (
        "How long should I boil an egg for a runny yolk?",
        "For a soft-boiled egg with a liquid centre, how many minutes do I cook it?",
    ),
    (
        "My laptop battery drains really fast. What can I do?",
        "What can I do about a notebook computer whose battery runs down quickly?",
    ),
    ("Translate 'good morning' into Spanish.", "What is the Spanish for 'good morning'?"),
    ("What's the capital of Australia?", "Which city is Australia's capital?"),
    (
        "Explain how vaccines train the immune system.",
        "How does a vaccine teach the body's defences to fight a disease?",
    ),
    ("Remind me to call mum on Sunday evening", "Set a reminder for Sunday night: phone my mother"),
    ("How do I keep my basil plant alive indoors?", "Tips for keeping a potted basil healthy inside the house?"),
    ("Write a short poem about the sea.", "Compose a brief verse about the ocean."),
    ("What is the difference between weather and climate?", "How is climate different from weather?"),
    ("How can I fall asleep faster at night?", "Any advice for getting to sleep more quickly in the evening?"),
    (
        "Summarise the plot of Romeo and Juliet in two sentences.",
        "Give me a two-sentence summary of the story of Romeo and Juliet.",
    ),
    ("Is it safe to eat raw cookie dough?", "Can I eat uncooked cookie dough without getting ill?"),
    (
        "My bike chain keeps slipping when I pedal hard.",
        "The chain on my bicycle jumps whenever I push hard on the pedals.",
    ),
    ("How do I convert Celsius to Fahrenheit?", "What's the formula to turn degrees C into degrees F?"),
    ("Cancel my dentist appointment on Friday", "Please call off Friday's visit to the dentist"),
    ("What are some cheap meals I can cook for a family of four?", "Suggest budget dinners that feed four people."),
    ("Why is the sky blue?", "What makes the sky look blue during the day?"),
    (
        "How do I stop my glasses from fogging up when I wear a mask?",
        "My spectacles steam up under a face mask; how do I prevent it?",
    ),
    ("How often should I water a cactus?", "How frequently does a cactus need watering?"),
    (
        "Can you help me write a cover letter for a nursing job?",
        "I need help drafting an application letter for a nurse position.",
    ),
    ("What's a good way to learn to touch type?", "How can I teach myself to type without looking at the keyboard?"),
    ("How do I clean limescale out of a kettle?", "What removes the hard-water build-up inside an electric kettle?"),
    (
        "Schedule lunch with the design team on Thursday at noon",
        "Put a team lunch with design in the calendar for Thursday, 12:00",
    ),
    ("What causes hiccups?", "Why do people get the hiccups?"),
    ("How many hours of sleep does a teenager need?", "What is the recommended amount of sleep for adolescents?"),
    (
        "My washing machine smells musty. How do I fix it?",
        "How do I get rid of the mouldy smell coming from my washer?",
    ),
    ("Give me three ideas for a child's birthday party.", "Suggest a few themes for a kid's birthday celebration."),
    ("How do I tell if an avocado is ripe?", "What's the way to check whether an avocado is ready to eat?"),
    ("Explain compound interest to a beginner.", "Describe in simple terms how compound interest works."),
    ("What should I pack for a weekend camping trip?", "Make me a packing list for two nights of camping."),
    (
        "How do I sharpen a kitchen knife without a sharpener?",
        "What can I use to put an edge on a chef's knife if I don't own a knife sharpener?",
    ),
    ("Move my 10am standup to 11", "Push the morning stand-up meeting back by an hour, from ten to eleven"),
    ("What is photosynthesis?", "How do plants turn sunlight into food?"),
    ("My phone screen cracked. Is it worth repairing?", "Should I pay to fix a smartphone with a broken display?"),
    ("How can I reduce my electricity bill in winter?", "Ways to spend less on power during the cold months?"),
    ("Recommend a beginner-friendly programming language.", "Which coding language is easiest to start with?"),
]

REWORDED: list[tuple[str, str]] = [
    ("How do I get rust off a cast iron pan?", "How can I remove the rust from my cast iron pan?"),
    ("Book a meeting with Sara next Tuesday at 3pm", "Next Tuesday at 3pm, book a meeting with Sara"),
    ("What is the capital city of Australia?", "Which city is the capital of Australia?"),
    ("Give me three ideas for a child's birthday party.", "Give me 3 ideas for a birthday party for a child."),
    ("How often should I water my cactus in winter?", "In winter, how often should a cactus be watered?"),
    ("Explain compound interest to a complete beginner.", "Explain to a total beginner how compound interest works."),
    ("My washing machine smells musty. How do I fix it?", "How do I fix a washing machine that smells musty?"),
    ("What should I pack for a weekend camping trip?", "What do I need to pack for a camping trip over the weekend?"),
]

# Same topics as the pairs above, different questions: none is a paraphrase of another row.
DISTINCT: list[str] = [
    "How do I season a new carbon steel wok?",
    "Book a table for two at an Italian restaurant on Saturday",
    "Why does my sourdough starter smell like nail polish remover?",
    "Who was the last emperor of the Western Roman Empire?",
    "How long do hard-boiled eggs keep in the fridge?",
    "How do I replace the hard drive in an old laptop?",
    "Translate 'where is the train station' into German.",
    "What's the population of New Zealand?",
    "What are the side effects of the flu jab?",
    "Delete every reminder I set for last month",
    "Which herbs grow well in a shady garden?",
    "Write a limerick about a cat who hates Mondays.",
    "What is the hottest temperature ever recorded on Earth?",
    "Is it bad to drink coffee late in the afternoon?",
    "Who wrote the play Hamlet and when?",
    "How long can cooked rice sit out before it is unsafe?",
    "How do I fix a flat tyre on a road bike?",
    "How many grams are in an ounce?",
    "Reschedule my haircut from Monday to Wednesday",
    "What spices go well with roasted carrots?",
    "Why do leaves change colour in autumn?",
    "How do I remove scratches from sunglasses lenses?",
    "Why are the leaves of my orchid turning yellow?",
    "How do I ask for a pay rise at my current job?",
    "What is the fastest typing speed ever recorded?",
    "How do I descale a coffee machine with citric acid?",
    "Invite the marketing team to a review on Monday at 4pm",
    "What causes a nosebleed in cold weather?",
    "How much water should an adult drink every day?",
    "My dishwasher leaves a white film on glasses. Why?",
    "How do I plan a surprise retirement party?",
    "How do I stop cut apples from turning brown?",
    "What is the difference between a stock and a bond?",
    "How do I pitch a tent in strong wind?",
    "What is the best wood for a cutting board?",
    "Cancel all meetings after 5pm this week",
    "How do bees make honey?",
    "How do I back up the photos on my phone?",
    "Are heat pumps cheaper to run than gas boilers?",
    "How do I undo the last commit in git?",
]
