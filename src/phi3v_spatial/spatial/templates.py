"""Phrasings of every question type (data only). Placeholders: {a}, {b} object names, {rel} a
relation phrase, {q} a formatted length, {h} a clock hour, {n} a count, {plural}, {name}, {noun}.
The index of the template used is stored in each sample's meta as `template`."""

REL_PHRASE = {
    "left": "to the left of", "right": "to the right of", "front": "in front of", "behind": "behind",
    "above": "above", "below": "below", "bigger": "bigger than", "smaller": "smaller than",
    "taller": "taller than", "shorter": "shorter than", "wider": "wider than", "thinner": "thinner than",
}

YESNO_QUESTIONS = (
    "Is the {a} {rel} the {b}?",
    "Is the {a} {rel} the {b} in this image?",
    "Looking at the image, is the {a} {rel} the {b}?",
    "Would you say the {a} is {rel} the {b}?",
    "Can you confirm whether the {a} is {rel} the {b}?",
    "Tell me if the {a} is {rel} the {b}.",
)
YESNO_VIEW_QUESTIONS = (  # extra phrasings for left/right/front/behind, which depend on the viewpoint
    "From the camera's point of view, is the {a} {rel} the {b}?",
    "As seen in the image, is the {a} {rel} the {b}?",
)
YES_ANSWERS = ("Yes, the {a} is {rel} the {b}.", "Yes.", "Yes, it is.")
NO_ANSWERS = ("No, the {a} is {opp} the {b}.", "No.", "No, it is {opp} the {b}.")

CHOICE_PAIR_PHRASE = {
    "left": "more to the left", "right": "more to the right", "front": "closer to the camera",
    "behind": "farther from the camera", "above": "higher up", "below": "lower down", "bigger": "bigger",
    "smaller": "smaller", "taller": "taller", "shorter": "shorter", "wider": "wider", "thinner": "thinner",
}
CHOICE_SUPERLATIVE = {
    "left": "the leftmost", "right": "the rightmost", "front": "the closest to the camera",
    "behind": "the farthest from the camera", "above": "the highest", "below": "the lowest",
    "bigger": "the biggest", "smaller": "the smallest", "taller": "the tallest", "shorter": "the shortest",
    "wider": "the widest", "thinner": "the thinnest",
}
CHOICE_PAIR_QUESTIONS = (
    "Which is {rel}, the {a} or the {b}?",
    "Which of the two is {rel}: the {a} or the {b}?",
    "Between the {a} and the {b}, which one is {rel}?",
)
CHOICE_SUPERLATIVE_QUESTIONS = (
    "Which of these objects is {rel}?",
    "Which object is {rel}?",
    "Of the objects listed, which one is {rel}?",
)
CHOICE_INSTRUCTIONS = ("Answer with the option's letter.", "Choose one option.", "Pick the correct option.")
CHOICE_ANSWERS = ("{letter}. {name}", "{letter}")

DISTANCE_QUESTIONS = {
    "center_distance": (
        "How far apart are the {a} and the {b}?",
        "What is the distance between the {a} and the {b}?",
        "How far is the {a} from the {b}?",
        "Measure the distance between the centers of the {a} and the {b}.",
    ),
    "horizontal_distance": (
        "What is the horizontal distance between the {a} and the {b}?",
        "Measured horizontally, how far apart are the {a} and the {b}?",
        "Ignoring height, how far is the {a} from the {b}?",
    ),
    "vertical_distance": (
        "What is the vertical distance between the {a} and the {b}?",
        "How big is the height difference between the centers of the {a} and the {b}?",
        "How far apart are the {a} and the {b} vertically?",
    ),
}
DISTANCE_ANSWERS = {
    "center_distance": ("The {a} and the {b} are about {q} apart.", "About {q}.", "The distance between them is about {q}."),
    "horizontal_distance": ("Horizontally, the {a} and the {b} are about {q} apart.", "About {q}.",
                            "The horizontal distance is about {q}."),
    "vertical_distance": ("The center of the {hi} is about {q} higher than that of the {lo}.", "About {q}.",
                          "The vertical distance is about {q}."),
}

SIZE_QUESTIONS = {
    "height": ("How tall is the {a}?", "What is the height of the {a}?", "Estimate the height of the {a}.",
               "How high is the {a}?"),
    "width": ("How wide is the {a}?", "What is the width of the {a}?", "Estimate how wide the {a} is.",
              "Measure the width of the {a}."),
}
SIZE_ANSWERS = {
    "height": ("The {a} is about {q} tall.", "About {q}.", "Its height is about {q}."),
    "width": ("The {a} is about {q} wide.", "About {q}.", "Its width is about {q}."),
}
UNIT_HINTS = {"m": "in meters", "cm": "in centimeters", "in": "in inches", "ft": "in feet"}

CLOCK_QUESTIONS = (
    "With 12 o'clock pointing straight away from the camera, at what clock position is the {b} from the {a}?",
    "Imagine standing at the {a} facing away from the camera. In which clock direction is the {b}?",
    "What is the direction of the {b} as seen from the {a}, as a clock position (12 o'clock is away from the camera)?",
)
CLOCK_ANSWERS = ("The {b} is at {h} o'clock from the {a}.", "{h} o'clock.", "At {h} o'clock.")

COUNT_QUESTIONS = ("How many {noun} are there in the image?", "Count the {noun}.", "How many {noun} can you see?",
                   "How many {noun} are in this picture?")
COUNT_ANSWERS = ("There are {n} {noun}.", "{n}")
COUNT_ONE = ("There is 1 {singular}.", "1")
COUNT_NONE = ("There are no {noun}.", "0")

EXIST_QUESTIONS = ("Is there {art} {name} in the image?", "Do you see {art} {name}?",
                   "Is there any {name} in this picture?", "Does the image contain {art} {name}?")
EXIST_YES = ("Yes, there is {art} {name}.", "Yes.")
EXIST_NO = ("No, there is no {name}.", "No.")

BOX_QUESTIONS = (
    'Locate the {a} and give its bounding box as JSON {{"label", "bbox_2d": [x1, y1, x2, y2]}} in 0-1000 coordinates.',
    "Detect the {a}. Output its bounding box as JSON, with coordinates normalized to 0-1000.",
    "Where is the {a}? Answer with a JSON bounding box (label and bbox_2d, 0-1000).",
    "Give the bounding box of the {a}.",
)
BOX_ALL_QUESTIONS = (
    "Detect all the {plural} in the image and return their bounding boxes as a JSON list with label and bbox_2d (0-1000).",
    "Find every {singular} in the image. Output a JSON list of bounding boxes.",
)
POINT_QUESTIONS = (
    'Point to the {a}. Answer as JSON {{"label", "point_2d": [x, y]}} in 0-1000 coordinates.',
    "Give a point on the {a} as JSON, with coordinates normalized to 0-1000.",
    "Where is the {a}? Answer with a point (label and point_2d, 0-1000).",
    "Point to the {a}.",
)
POINT_ALL_QUESTIONS = (
    "Point to all the {plural} in the image. Answer with a JSON list of points with label and point_2d (0-1000).",
    "Mark every {singular} in the image with a point. Output a JSON list.",
)

ROBOT_USER = (
    "The robot's end-effector is at {pose}. What are the next set of actions to {task}?",
    "The end-effector is currently at {pose}. {Task}.",
    "Current end-effector pose: {pose}. Output the actions to {task}.",
)
ROBOT_TASKS = {
    "pick": ("pick up the {a}", "grasp the {a} and lift it", "pick the {a} up"),
    "place_on": ("put the {a} on the {b}", "place the {a} on top of the {b}", "stack the {a} on the {b}"),
    "place_in": ("put the {a} in the {b}", "place the {a} into the {b}"),
    "move": ("move the {a} {q} {direction}", "pick up the {a} and put it down {q} {direction}",
             "relocate the {a} {q} {direction}"),
}
ROBOT_DIRECTIONS = {"left": (0.0, 1.0), "right": (0.0, -1.0), "forward": (1.0, 0.0), "backward": (-1.0, 0.0)}
ROBOT_DIRECTION_WORDS = {"left": "to the left", "right": "to the right", "forward": "forward", "backward": "backward"}
