// Calibration for loadtests/ds_bench.py: an HTTP server that answers every request at once
// (201 to PUT, 204 otherwise), so the append phase against it measures the load generator.
import { createServer } from "node:http"

const server = createServer((req, res) => {
  req.resume()
  req.on("end", () => {
    res.writeHead(req.method === "PUT" ? 201 : 204)
    res.end()
  })
})
server.listen(Number(process.argv[2]), "127.0.0.1", () => console.log("listening"))
