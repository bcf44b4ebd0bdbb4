// The Durable Streams reference server (@durable-streams/server), in memory, on 127.0.0.1:PORT.
// Prints its URL once listening; stops on SIGTERM.
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.argv[2] || 0)
const server = new DurableStreamTestServer({ port, host: "127.0.0.1", longPollTimeout: 20_000 })
const url = await server.start()
console.log(url)
process.on("SIGTERM", async () => {
  await server.stop()
  process.exit(0)
})
