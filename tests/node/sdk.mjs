// The official openai Node SDK against a running tollway: prints what it read, as JSON.
// Usage: TOLLWAY_URL=http://127.0.0.1:PORT/v1 TOLLWAY_KEY=sk-... node sdk.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.TOLLWAY_URL, apiKey: process.env.TOLLWAY_KEY, maxRetries: 0 });
const out = {};
const chat = await client.chat.completions.create({ model: "echo", messages: [{ role: "user", content: "hi node" }] });
out.chat = chat.choices[0].message.content;
// The Node SDK asks for base64 embeddings by default and decodes them.
const emb = await client.embeddings.create({ model: "echo", input: "hello" });
out.embedding = emb.data[0].embedding;
const resp = await client.responses.create({ model: "echo", input: "hello responses" });
out.responses = { text: resp.output_text, cost: resp.usage.cost, status: resp.status };
const stream = client.responses.stream({ model: "echo", input: "hello stream" });
const kinds = [];
for await (const event of stream) kinds.push(event.type);
const final = await stream.finalResponse();
out.stream = { text: final.output_text, first: kinds[0], last: kinds[kinds.length - 1], cost: final.usage.cost };
console.log(JSON.stringify(out));
