"""The model card's sample code, with only the import lines changed (and a local image instead of a
download). Runs on CPU too: pass a checkpoint folder or hub id, an image, and a device.

    python examples/model_card.py MODEL_DIR_OR_HUB_ID IMAGE [DEVICE]
"""
import sys

from PIL import Image

from phi3v_spatial import AutoModelForCausalLM, AutoProcessor

model_id = sys.argv[1] if len(sys.argv) > 1 else "MbodiAI/phi3v-spatial"
device = sys.argv[3] if len(sys.argv) > 3 else "cuda"

model = AutoModelForCausalLM.from_pretrained(model_id, device_map=device, trust_remote_code=True, torch_dtype="auto")

processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)

messages = [
    {"role": "user", "content": "<|image_1|>\nWhat is shown in this image?"},
    {"role": "assistant", "content": "The chart displays the percentage of respondents who agree with various statements about their preparedness for meetings."},
    {"role": "user", "content": "Provide insightful questions to spark discussion."},
]

image = Image.open(sys.argv[2])

prompt = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

inputs = processor(prompt, [image], return_tensors="pt").to(device)

generation_args = {
    "max_new_tokens": 20,
    "temperature": 0.0,
    "do_sample": False,
}

generate_ids = model.generate(**inputs, eos_token_id=processor.tokenizer.eos_token_id, **generation_args)

# remove input tokens
generate_ids = generate_ids[:, inputs["input_ids"].shape[1]:]
response = processor.batch_decode(generate_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]

print(response)
