// The ticket desk's own data: a few support tickets with their orders, in memory. Nothing here
// knows about Taskpass; the MCP server in server.ts puts the tools in front of it.

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
