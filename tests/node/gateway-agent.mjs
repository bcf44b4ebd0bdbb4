// The HttpAgent subclass docs/integrations.md ships (AG-UI section), verbatim: its connect()
// resumes through GET /v1/sessions/{id}/agui. tests/node/agui.test.mjs runs it.
import { HttpAgent, runHttpRequest, transformHttpEventStream } from '@ag-ui/client';
import { finalize, takeWhile } from 'rxjs';

/** An HttpAgent for a gateway session (url: …/v1/sessions/{id}/agui) that can resume. */
export class GatewayAgent extends HttpAgent {
  constructor(config) {
    super(config);
    this.lastEventId = config.lastEventId; // save it with agent.messages to resume later
    // The gateway puts each event's offset in rawEvent: note how far this agent applied.
    this.subscribe({ onEvent: ({ event }) => {
      if (event.rawEvent?.offset) this.lastEventId = event.rawEvent.offset;
    } });
  }

  // connectAgent(): the run in progress from lastEventId (else from its start), until it ends.
  connect() {
    const headers = { ...this.headers, Accept: 'text/event-stream' };
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
    const url = this.lastEventId ? this.url : `${this.url}?from=run`;
    const controller = (this.abortController = new AbortController()); // for abortRun()
    const response = () => this.fetch(url, { headers, signal: controller.signal });
    return transformHttpEventStream(runHttpRequest(response), this.debugLogger).pipe(
      takeWhile((e) => e.type !== 'RUN_FINISHED' && e.type !== 'RUN_ERROR', true),
      finalize(() => controller.abort())); // the GET stays open across runs: close it
  }
}
