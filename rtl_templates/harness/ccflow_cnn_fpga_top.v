// ccflow_cnn_fpga_top -- implementation harness of the CNN accelerator for resource and Fmax runs
// (not part of the IP), as ccflow_fpga_top is for the LSTM: every input and output registered, the
// logits XOR-folded onto 16 pins, so no logic is optimized away and timing is measured between
// registers, not to pins.
`include "ccflow_config.vh"
`default_nettype none

module ccflow_cnn_fpga_top (
  input  wire                              clk_i,
  input  wire                              rst_ni,
  input  wire                              s_axis_tvalid,
  output wire                              s_axis_tready,
  input  wire [`CCFLOW_PIXEL_BYTES*8-1:0]  s_axis_tdata,
  output wire                              m_axis_tvalid,
  input  wire                              m_axis_tready,
  output wire [15:0]                       m_axis_fold_o
);

  localparam integer LW = `CCFLOW_LOGIT_BYTES * 8;

  reg                              rst_nq, tvalid_q, tready_q;
  reg [`CCFLOW_PIXEL_BYTES*8-1:0]  tdata_q;
  wire                             s_ready, m_valid;
  wire [LW-1:0]                    logits;

  ccflow_top u_top (
    .clk_i         (clk_i),
    .rst_ni        (rst_nq),
    .s_axis_tvalid (tvalid_q),
    .s_axis_tready (s_ready),
    .s_axis_tdata  (tdata_q),
    .m_axis_tvalid (m_valid),
    .m_axis_tready (tready_q),
    .m_axis_tdata  (logits)
  );

  reg [15:0] fold_q;
  reg        s_ready_q, m_valid_q;
  reg [15:0] fold;
  integer i;
  always @(*) begin
    fold = 16'd0;
    for (i = 0; i < LW; i = i + 1) begin
      fold[i % 16] = fold[i % 16] ^ logits[i];
    end
  end

  always @(posedge clk_i) begin
    rst_nq    <= rst_ni;
    tvalid_q  <= s_axis_tvalid;
    tdata_q   <= s_axis_tdata;
    tready_q  <= m_axis_tready;
    fold_q    <= fold;
    s_ready_q <= s_ready;
    m_valid_q <= m_valid;
  end

  assign s_axis_tready = s_ready_q;
  assign m_axis_tvalid = m_valid_q;
  assign m_axis_fold_o = fold_q;

endmodule

`default_nettype wire
