// The ticket desk's own data: a few support tickets with their orders, in memory (the default) or
// in PostgreSQL (tickets-pg.ts). Nothing here knows about Taskpass; the MCP server in server.ts
// puts the tools in front of it.

export interface Ticket {
  id: string;
  customer: string;
  subject: string;
  status: 'open' | 'pending' | 'closed';
  order: { id: string; amount: number; currency: string; refunded: number };
  comments: { by: string; text: string; at: string }[];
}

export function seedTickets(): Map<string, Ticket> {
  const t = (id: string, customer: string, subject: string, orderId: string, amount: number): Ticket => ({
    id,
    customer,
    subject,
    status: 'open',
    order: { id: orderId, amount, currency: 'EUR', refunded: 0 },
    comments: [],
  });
  return new Map(
    [
      t('T-1001', 'ada@example.com', 'Parcel arrived damaged', 'O-5001', 129.9),
      t('T-1002', 'grace@example.com', 'Charged twice for one order', 'O-5002', 54.0),
      t('T-1003', 'linus@example.com', 'Cannot change delivery address', 'O-5003', 18.5),
    ].map((x) => [x.id, x]),
  );
}

export class TicketDesk {
  readonly tickets = seedTickets();

  list(status?: Ticket['status']): Pick<Ticket, 'id' | 'subject' | 'status'>[] {
    return [...this.tickets.values()]
      .filter((x) => !status || x.status === status)
      .map(({ id, subject, status }) => ({ id, subject, status }));
  }

  get(id: string): Ticket {
    const ticket = this.tickets.get(id);
    if (!ticket) throw new Error(`no ticket ${id}`);
    return ticket;
  }

  comment(id: string, by: string, text: string): Ticket {
    const ticket = this.get(id);
    ticket.comments.push({ by, text, at: new Date().toISOString() });
    if (ticket.status === 'open') ticket.status = 'pending';
    return ticket;
  }

  close(id: string, by: string): Ticket {
    const ticket = this.comment(id, by, 'closed');
    ticket.status = 'closed';
    return ticket;
  }

  refund(id: string, amount: number, by: string): Ticket {
    const ticket = this.get(id);
    const left = ticket.order.amount - ticket.order.refunded;
    if (!(amount > 0) || amount > left) throw new Error(`refund must be between 0 and ${left.toFixed(2)}`);
    ticket.order.refunded += amount;
    return this.comment(id, by, `refunded ${amount.toFixed(2)} ${ticket.order.currency}`);
  }

  delete(id: string): void {
    this.get(id);
    this.tickets.delete(id);
  }
}

/** The desk's operations as a tool call runs them (the PostgreSQL desk's are asynchronous). */
export interface TicketOps {
  list(status?: Ticket['status']): Promise<Pick<Ticket, 'id' | 'subject' | 'status'>[]>;
  get(id: string): Promise<Ticket>;
  comment(id: string, by: string, text: string): Promise<Ticket>;
  close(id: string, by: string): Promise<Ticket>;
  refund(id: string, amount: number, by: string): Promise<Ticket>;
  delete(id: string): Promise<void>;
}

/** The data one tool call works on; `close()` releases it when the call is done. */
export interface TicketSession {
  ops: TicketOps;
  /** The database user the call runs as (the PostgreSQL desk: the task's leased user). */
  dbUser?: string;
  close(): Promise<void>;
}

/** Where the tools' data lives: opened once per tool call with the handler's SDK `extra`. */
export interface TicketBackend {
  open(extra: unknown): Promise<TicketSession>;
}

/** The in-memory desk as a backend: every call works on the same objects. */
export function memoryBackend(desk: TicketDesk): TicketBackend {
  const ops: TicketOps = {
    list: async (status) => desk.list(status),
    get: async (id) => desk.get(id),
    comment: async (id, by, text) => desk.comment(id, by, text),
    close: async (id, by) => desk.close(id, by),
    refund: async (id, amount, by) => desk.refund(id, amount, by),
    delete: async (id) => desk.delete(id),
  };
  const session: TicketSession = { ops, close: async () => {} };
  return { open: async () => session };
}
