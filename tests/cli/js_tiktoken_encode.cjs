// Reference encoder for tokenizer_cl100k_test.py: reads a JSON array of strings from the file
// named by argv[2] and prints a JSON array of their cl100k_base ids, as js-tiktoken encodes them
// (special tokens in the text are ordinary text, as in Trident). NODE_PATH must reach
// data/assets/npm/node_modules (scripts/fetch_assets.sh installs js-tiktoken there).
const fs = require("fs");
const { Tiktoken } = require("js-tiktoken/lite");
const ranks = require("js-tiktoken/ranks/cl100k_base");
const enc = new Tiktoken(ranks);
const texts = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
process.stdout.write(JSON.stringify(texts.map((t) => enc.encode(t, [], []))));
